//go:build tools

// Package crds is never built: importing a package of each API module that hack/build-crds.sh
// generates CRDs from keeps that module a requirement of this one under `go mod tidy`, at the version
// go.mod pins (the script runs controller-gen in that module's own directory).
package crds

import (
	_ "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	_ "sigs.k8s.io/gateway-api-inference-extension/api/v1"
	_ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)
