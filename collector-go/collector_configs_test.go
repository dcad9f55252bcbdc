// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

package scaleprocessor

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// otelcol returns the otelcol-scale binary: $SCALE_OTELCOL (then it must exist; `make test-go`
// sets it), else ../_build/otelcol-scale/otelcol-scale if built, else the test is skipped.
func otelcol(t *testing.T) string {
	if p := os.Getenv("SCALE_OTELCOL"); p != "" {
		_, err := os.Stat(p)
		require.NoError(t, err, "SCALE_OTELCOL")
		return p
	}
	p, err := filepath.Abs(filepath.Join("..", "_build", "otelcol-scale", "otelcol-scale"))
	require.NoError(t, err)
	if _, err := os.Stat(p); err != nil {
		t.Skip("otelcol-scale not built (make collector); set SCALE_OTELCOL to require it")
	}
	return p
}

// validate runs `otelcol-scale validate --config file` from the repository root.
func validate(t *testing.T, bin, file string, env ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "validate", "--config", file)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestCollectorConfigsValidate checks every collector configuration in the repository with the
// real collector's `validate` (which runs the scale processor's Validate, engine included).
func TestCollectorConfigsValidate(t *testing.T) {
	bin := otelcol(t)
	files, err := filepath.Glob(filepath.Join("..", "configs", "collector", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		rel, _ := filepath.Rel("..", f)
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, err := validate(t, bin, rel)
			assert.NoError(t, err, out)
		})
	}
	// And validate does catch a bad rules file, naming the file and line.
	out, err := validate(t, bin, filepath.Join("configs", "collector", "sidecar.yaml"),
		"SCALE_RULES_FILE="+filepath.Join("collector-go", "testdata", "rules_invalid.yaml"))
	require.Error(t, err)
	assert.Contains(t, out, "collector-go/testdata/rules_invalid.yaml: line 4: rules[0].count")
}
