{{/* The chart name. */}}
{{- define "kars-gitops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name: the release name, unless it already holds the chart name. */}}
{{- define "kars-gitops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "kars-gitops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kars-gitops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kars-gitops
{{- end -}}

{{/* Labels that select the agent pods. */}}
{{- define "kars-gitops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kars-gitops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The agent's ServiceAccount. */}}
{{- define "kars-gitops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kars-gitops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The username the API server sees for the agent. */}}
{{- define "kars-gitops.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "kars-gitops.serviceAccountName" . }}
{{- end -}}

{{/* The agent image: by digest when one is given. */}}
{{- define "kars-gitops.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secret names: the user's existing one, or ours. */}}
{{- define "kars-gitops.trustSecret" -}}
{{- default (printf "%s-trust" (include "kars-gitops.fullname" .)) .Values.trust.existingSecret -}}
{{- end -}}
{{- define "kars-gitops.credentialsSecret" -}}
{{- default (printf "%s-git-credentials" (include "kars-gitops.fullname" .)) .Values.repository.credentials.existingSecret -}}
{{- end -}}
{{- define "kars-gitops.webhookSecret" -}}
{{- default (printf "%s-webhook" (include "kars-gitops.fullname" .)) .Values.webhook.existingSecret -}}
{{- end -}}
{{- define "kars-gitops.syncLogSecret" -}}
{{- default (printf "%s-sync-log-key" (include "kars-gitops.fullname" .)) .Values.syncLog.existingSecret -}}
{{- end -}}
{{- define "kars-gitops.forgeSecret" -}}
{{- default (printf "%s-forge" (include "kars-gitops.fullname" .)) .Values.forge.existingSecret -}}
{{- end -}}
{{- define "kars-gitops.proposerSecret" -}}
{{- default (printf "%s-sre-proposer" (include "kars-gitops.fullname" .)) .Values.sre.proposer.existingSecret -}}
{{- end -}}
{{- define "kars-gitops.hasProposer" -}}
{{- if and .Values.sre.create .Values.sre.executor .Values.forge.url .Values.sre.proposer.email -}}true{{- end -}}
{{- end -}}
{{- define "kars-gitops.hasCredentials" -}}
{{- if or .Values.repository.credentials.existingSecret .Values.repository.credentials.token .Values.repository.credentials.sshPrivateKey -}}true{{- end -}}
{{- end -}}

{{/* Refuses values that cannot work, with the value to set (the schema checks types). */}}
{{- define "kars-gitops.validate" -}}
{{- if not .Values.repository.url -}}
{{- fail "repository.url is required: the Git URL of the policy repository (e.g. --set repository.url=https://git.example.com/org/policies.git)" -}}
{{- end -}}
{{- if not (or .Values.trust.existingSecret .Values.trust.allowedSigners .Values.trust.openpgpKeyring .Values.trust.trustPolicy) -}}
{{- fail "no trust root: set trust.allowedSigners (git allowed_signers lines), trust.openpgpKeyring (an armored keyring), trust.trustPolicy (a TrustPolicy with its signers) or trust.existingSecret; the agent applies only commits signed by these keys" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: two agents must never apply at once" -}}
{{- end -}}
{{- if and .Values.uninstall.prune (not .Values.repository.name) -}}
{{- fail "uninstall.prune=true needs repository.name: the uninstall hook deletes that PolicyRepo's objects" -}}
{{- end -}}
{{- if and .Values.forge.url (not .Values.forge.repository) -}}
{{- fail "forge.url needs forge.repository (OWNER/NAME of the policy repository on the forge)" -}}
{{- end -}}
{{- if and .Values.forge.url (not (or .Values.forge.existingSecret .Values.forge.token)) -}}
{{- fail "forge.url needs a token: forge.existingSecret (a Secret with key token) or forge.token" -}}
{{- end -}}
{{- if and .Values.sre.proposer.email (not .Values.forge.url) -}}
{{- fail "sre.proposer.email needs forge.url (in-cluster proposals become pull requests on that forge)" -}}
{{- end -}}
{{- if and .Values.sre.proposer.email (not (or .Values.sre.proposer.existingSecret .Values.sre.proposer.sshPrivateKey)) -}}
{{- fail "sre.proposer.email needs a key: sre.proposer.existingSecret (a Secret with key ssh-privatekey) or sre.proposer.sshPrivateKey" -}}
{{- end -}}
{{- if and .Values.bundles.identities (not .Values.bundles.certificateRoots) -}}
{{- fail "bundles.identities needs bundles.certificateRoots (the roots their certificates chain to)" -}}
{{- end -}}
{{- end -}}
