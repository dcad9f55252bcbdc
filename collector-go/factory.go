// Copyright The SCALE Authors
// SPDX-License-Identifier: Apache-2.0

//go:generate sh internal/tools/mdatagen.sh

package scaleprocessor // import "github.com/scale-autoscaler/scale/collector-go"

import (
	"context"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processorhelper"

	"github.com/scale-autoscaler/scale/collector-go/internal/metadata"
)

// NewFactory returns the factory of the `scale` processor.
func NewFactory() processor.Factory {
	return processor.NewFactory(
		metadata.Type,
		createDefaultConfig,
		processor.WithTraces(createTracesProcessor, metadata.TracesStability),
	)
}

func createDefaultConfig() component.Config {
	return &Config{
		Mode: defaultMode,
		Sampler: SamplerConfig{
			NTrees:      defaultNTrees,
			Height:      defaultHeight,
			WindowSize:  defaultWindowSize,
			KeepBudget:  defaultKeepBudget,
			MaxDuration: defaultMaxDuration,
			TrainSize:   defaultTrainSize,
			Seed:        defaultSeed,
		},
		Keys: KeysConfig{MaxKeys: defaultMaxKeys},
		Keyed: KeyedConfig{
			Memory:        defaultMemory,
			MinKeyCount:   defaultMinKeyCount,
			ContextWindow: defaultContextWindow,
			Sides:         defaultSides,
		},
		Drop:             true,
		SnapshotInterval: defaultSnapshotInterval,
		ReportInterval:   defaultReportInterval,
	}
}

func createTracesProcessor(ctx context.Context, set processor.Settings, cfg component.Config, next consumer.Traces) (processor.Traces, error) {
	return newTracesProcessor(ctx, set, cfg.(*Config), next)
}

// newTracesProcessor builds the processor on processorhelper; opts are test seams.
func newTracesProcessor(ctx context.Context, set processor.Settings, cfg *Config, next consumer.Traces, opts ...option) (processor.Traces, error) {
	p, err := newScaleProcessor(set, cfg, opts...)
	if err != nil {
		return nil, err
	}
	p.next = next
	return processorhelper.NewTraces(ctx, set, cfg, next, p.processTraces,
		processorhelper.WithCapabilities(consumer.Capabilities{MutatesData: true}),
		processorhelper.WithStart(p.start),
		processorhelper.WithShutdown(p.shutdown),
	)
}
