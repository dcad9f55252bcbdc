// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build debug

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

import "runtime"

// maybeGC runs the GC before every C call (`go test -tags debug`), so that a Go value freed
// too early (a missing runtime.KeepAlive) shows up in tests.
func maybeGC() { runtime.GC() }
