// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/confmap"
	"go.yaml.in/yaml/v3"
)

// TestReadmeDefaults keeps the configuration reference in both READMEs (this package's and the
// repository's) equal to createDefaultConfig: every ```yaml block that starts with
// `processors:\n  scale:` must decode to exactly the defaults.
func TestReadmeDefaults(t *testing.T) {
	for _, path := range []string{"README.md", "../README.md"} {
		text, err := os.ReadFile(path)
		require.NoError(t, err)
		blocks := 0
		for _, part := range strings.Split(string(text), "```yaml\n")[1:] {
			block, _, ok := strings.Cut(part, "```")
			require.True(t, ok, "%s: unclosed block", path)
			if !strings.HasPrefix(block, "processors:\n  scale:") {
				continue
			}
			blocks++
			var raw map[string]any
			require.NoError(t, yaml.Unmarshal([]byte(block), &raw), "%s", path)
			sub, err := confmap.NewFromStringMap(raw).Sub("processors::scale")
			require.NoError(t, err)
			got := createDefaultConfig().(*Config)
			require.NoError(t, sub.Unmarshal(got), "%s", path)
			if len(got.Rules) == 0 {
				got.Rules = nil // `rules: []` and no rules are the same configuration
			}
			require.Equal(t, createDefaultConfig(), got, "%s: the README's defaults differ from createDefaultConfig", path)
		}
		require.Equal(t, 1, blocks, "%s: one processor reference block", path)
	}
}
