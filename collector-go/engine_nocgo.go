// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !cgo

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

// cgoEnabled reports whether this build can reach libscale: it cannot, so the factory refuses
// to create the processor with errNoCgo ("the scale processor requires CGO_ENABLED=1").
const cgoEnabled = false

// rawDecisions has no C type to hold without cgo.
type rawDecisions = []struct{}

// cBatch has no C structs to hold without cgo.
type cBatch struct{}

// nativeEngine cannot exist without cgo; its constructors return errNoCgo.
type nativeEngine struct{ engine }

func newNativeEngine(engineSpec) (*nativeEngine, error) { return nil, errNoCgo }

func restoreNativeEngine(engineSpec, string) (*nativeEngine, error) { return nil, errNoCgo }
