// Unit tests of the panels' client and models: ts-jest in jsdom (see src/__tests__/).
const esModules = ['@jupyter/ydoc', 'lib0', 'y-protocols', 'yjs', '@jupyterlab/'].join('|');

module.exports = {
  testEnvironment: '<rootDir>/jest.environment.js',
  testMatch: ['<rootDir>/src/__tests__/**/*.spec.ts?(x)'],
  transform: {
    '^.+\\.[jt]sx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json', isolatedModules: true }]
  },
  transformIgnorePatterns: [`/node_modules/(?!(${esModules}))`]
};
