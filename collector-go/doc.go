// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

// Package scaleprocessor is the SCALE traces processor (type `scale`): it scores every span's
// duration with the SCALE engine (libscale, through cgo), keeps the anomalous spans, and marks
// the span that completed a latency rule's window with a `scale.decision` span event.
package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"
