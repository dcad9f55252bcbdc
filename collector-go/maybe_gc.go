// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !debug

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

// maybeGC does nothing; under the `debug` build tag it runs the GC before every C call.
func maybeGC() {}
