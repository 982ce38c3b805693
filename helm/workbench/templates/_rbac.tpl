{{- /*
    Rules both the hub and the control plane need to make a user's namespace and its objects
    (the spawner before a session, the control plane before a job run or a model deployment).
    Call with the value of workbench.userNamespaces.deleteOnUserRemoval.
*/}}
{{- define "workbench.rbac.namespaceRules" -}}
{{- $deleteNamespaces := . }}
# cluster-scoped: the user namespaces
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch, create, patch{{ if $deleteNamespaces }}, delete{{ end }}]
# cluster-scoped: the static volume (NFS or CSI) of each project a user may use, deleted
# when the user loses access to the project
- apiGroups: [""]
  resources: [persistentvolumes]
  verbs: [get, list, watch, create, patch, delete]
# the fixed objects of each user namespace
- apiGroups: [""]
  resources: [serviceaccounts, resourcequotas, limitranges]
  verbs: [get, list, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, create, patch]
# the Spark Role's rights (see above), and the project claims
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete, deletecollection]
- apiGroups: [""]
  resources: [services, configmaps, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete, deletecollection]
{{- end }}
