package scheduler

import (
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// Config is diffusers' FlowMatchEulerDiscreteScheduler configuration, read
// from a scheduler_config.json (FLUX.1-dev's scheduler/ folder). Unknown
// keys are ignored; missing ones take the constructor's defaults
// (DefaultConfig).
type Config struct {
	NumTrainTimesteps  int     `json:"num_train_timesteps"`
	Shift              float64 `json:"shift"`
	UseDynamicShifting bool    `json:"use_dynamic_shifting"`
	BaseShift          float64 `json:"base_shift"`
	MaxShift           float64 `json:"max_shift"`
	BaseImageSeqLen    int     `json:"base_image_seq_len"`
	MaxImageSeqLen     int     `json:"max_image_seq_len"`
	InvertSigmas       bool    `json:"invert_sigmas"`
	// The options below change the schedule in ways FLUX does not use;
	// they are read so that a config asking for them is refused instead of
	// silently ignored.
	ShiftTerminal        *float64 `json:"shift_terminal"`
	UseKarrasSigmas      bool     `json:"use_karras_sigmas"`
	UseExponentialSigmas bool     `json:"use_exponential_sigmas"`
	UseBetaSigmas        bool     `json:"use_beta_sigmas"`
	TimeShiftType        string   `json:"time_shift_type"`
}

// DefaultConfig is the constructor defaults of diffusers 0.32.2's
// FlowMatchEulerDiscreteScheduler.
func DefaultConfig() Config {
	return Config{
		NumTrainTimesteps: 1000,
		Shift:             1,
		BaseShift:         0.5,
		MaxShift:          1.15,
		BaseImageSeqLen:   256,
		MaxImageSeqLen:    4096,
	}
}

// ParseConfig decodes a scheduler_config.json body over DefaultConfig.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("flow-match scheduler config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads a scheduler_config.json file.
func LoadConfig(path string) (Config, error) {
	return jsonconfig.Load(path, "flow-match scheduler config", ParseConfig)
}

// Validate checks that the configuration is one this package implements.
func (c Config) Validate() error {
	switch {
	case c.NumTrainTimesteps < 1:
		return fmt.Errorf("flow-match scheduler config: num_train_timesteps %d", c.NumTrainTimesteps)
	case c.Shift <= 0:
		return fmt.Errorf("flow-match scheduler config: shift %v must be positive", c.Shift)
	case c.UseDynamicShifting && c.MaxImageSeqLen == c.BaseImageSeqLen:
		return fmt.Errorf("flow-match scheduler config: max_image_seq_len equals base_image_seq_len (%d): no shift slope", c.MaxImageSeqLen)
	case c.ShiftTerminal != nil && *c.ShiftTerminal != 0:
		return fmt.Errorf("flow-match scheduler config: shift_terminal is not supported")
	case c.UseKarrasSigmas || c.UseExponentialSigmas || c.UseBetaSigmas:
		return fmt.Errorf("flow-match scheduler config: karras/exponential/beta sigmas are not supported")
	case c.TimeShiftType != "" && c.TimeShiftType != "exponential":
		return fmt.Errorf("flow-match scheduler config: time_shift_type %q is not supported (want exponential)", c.TimeShiftType)
	}
	return nil
}

// CalculateShift is the FLUX pipelines' calculate_shift, in float64: μ grows
// linearly with the packed image sequence length from base_shift at
// base_image_seq_len to max_shift at max_image_seq_len (no clamping).
func CalculateShift(imageSeqLen, baseSeqLen, maxSeqLen int, baseShift, maxShift float64) float64 {
	m := (maxShift - baseShift) / float64(maxSeqLen-baseSeqLen)
	b := baseShift - m*float64(baseSeqLen)
	return float64(imageSeqLen)*m + b
}

// Mu is CalculateShift with this configuration's shifts and sequence
// lengths, as FluxControlNetPipeline passes them.
func (c Config) Mu(imageSeqLen int) float64 {
	return CalculateShift(imageSeqLen, c.BaseImageSeqLen, c.MaxImageSeqLen, c.BaseShift, c.MaxShift)
}
