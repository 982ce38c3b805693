// jsdom, plus Node's fetch classes (jsdom has none) for ServerConnection.makeRequest.
const JSDOMEnvironment = require('jest-environment-jsdom').default;

class Environment extends JSDOMEnvironment {
  constructor(...args) {
    super(...args);
    for (const name of ['fetch', 'Request', 'Response', 'Headers']) {
      this.global[name] = globalThis[name];
    }
  }
}

module.exports = Environment;
