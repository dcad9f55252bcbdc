// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:build race

package scaleprocessor

const raceEnabled = true
