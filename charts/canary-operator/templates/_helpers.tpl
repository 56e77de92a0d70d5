{{/* The objects' base name. */}}
{{- define "canary-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object: the kustomize ones plus Helm's bookkeeping. */}}
{{- define "canary-operator.labels" -}}
app.kubernetes.io/name: canary-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The pods' labels, also the selectors (the same as the kustomize base). */}}
{{- define "canary-operator.selectorLabels" -}}
app.kubernetes.io/name: canary-operator
app.kubernetes.io/component: controller
{{- end -}}

{{/* What the operator may do (manifests/rbac/role.yaml; docs/install.md explains it). */}}
{{- define "canary-operator.rules" -}}
- apiGroups: [canary-operator.dev]
  resources: [canaryrollouts]
  verbs: [get, list, watch, patch]
- apiGroups: [canary-operator.dev]
  resources: [canaryrollouts/status]
  verbs: [update]
- apiGroups: [canary-operator.dev]
  resources: [canaryrollouts/finalizers]
  verbs: [update]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, delete]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, update]
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, create, update, delete]
- apiGroups: [networking.istio.io]
  resources: [virtualservices]
  verbs: [get, update]
- apiGroups: [networking.istio.io]
  resources: [destinationrules]
  verbs: [get]
{{- /* The abort endpoint: who calls (TokenReview), may they patch (SubjectAccessReview).
  Cluster-scoped: in a Role they grant nothing (see manifests/rbac/auth-delegator). */}}
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
{{- if .Values.notifications }}
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
  resourceNames: [canary-operator-notifications]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  resourceNames: [canary-operator-notifications-secret]
{{- end }}
{{- with .Values.webhookSecrets }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  resourceNames: {{ toJson . }}
{{- end }}
{{- end -}}

{{/* Annotations of the CRD-side objects: kept on uninstall if crds.keep. */}}
{{- define "canary-operator.crdAnnotations" -}}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end -}}
