// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// metadata.yaml lists the metric attributes' values for mdatagen's documentation; they are the
// contract's labels (contract_gen.go, generated from scale-core) and the processor's own
// (`source`), and must stay the same.
func TestMetadataEnumsAreTheContractsLabels(t *testing.T) {
	raw, err := os.ReadFile("metadata.yaml")
	require.NoError(t, err)
	var md struct {
		Attributes map[string]struct {
			Enum []string `yaml:"enum"`
		} `yaml:"attributes"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &md))
	require.Equal(t, skipReasons[1:], md.Attributes["reason"].Enum, "metadata.yaml: attributes.reason.enum")
	require.Equal(t, []string{actionHorizontalLabel, actionVerticalLabel}, md.Attributes["action"].Enum,
		"metadata.yaml: attributes.action.enum")
	require.Equal(t, []string{sourceSnapshot, sourceInitialSnapshot, sourceCold}, md.Attributes["source"].Enum,
		"metadata.yaml: attributes.source.enum")
}
