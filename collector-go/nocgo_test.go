// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !cgo

package scaleprocessor

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/processor/processortest"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

// Run with `CGO_ENABLED=0 go test -run TestNoCgo .` (make test-go does).
func TestNoCgoFailsClearlyAtCreation(t *testing.T) {
	f := NewFactory()
	cfg := f.CreateDefaultConfig()
	require.NoError(t, cfg.(*Config).Validate(), "validation without the engine still works")
	_, err := f.CreateTraces(context.Background(), processortest.NewNopSettings(metadata.Type), cfg, consumertest.NewNop())
	require.ErrorContains(t, err, "the scale processor requires CGO_ENABLED=1")
}
