package scheduler

import (
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// Config is the union of diffusers' DDPMScheduler and DDIMScheduler
// configurations, read from a scheduler_config.json. Unknown keys (such as
// PNDM's skip_prk_steps in SD2-base's file) are ignored and missing ones
// take diffusers' defaults (DefaultConfig), which is what
// DDPMScheduler.from_pretrained does with SD2-base's PNDM config.
type Config struct {
	NumTrainTimesteps int       `json:"num_train_timesteps"`
	BetaStart         float64   `json:"beta_start"`
	BetaEnd           float64   `json:"beta_end"`
	BetaSchedule      string    `json:"beta_schedule"` // linear, scaled_linear, squaredcos_cap_v2, sigmoid
	TrainedBetas      []float64 `json:"trained_betas"`
	// VarianceType is DDPM's: fixed_small, fixed_small_log, fixed_large,
	// learned or learned_range.
	VarianceType             string  `json:"variance_type"`
	ClipSample               bool    `json:"clip_sample"`
	ClipSampleRange          float64 `json:"clip_sample_range"`
	PredictionType           string  `json:"prediction_type"` // epsilon, v_prediction, sample
	Thresholding             bool    `json:"thresholding"`
	DynamicThresholdingRatio float64 `json:"dynamic_thresholding_ratio"`
	SampleMaxValue           float64 `json:"sample_max_value"`
	TimestepSpacing          string  `json:"timestep_spacing"` // leading, trailing, linspace
	StepsOffset              int     `json:"steps_offset"`
	RescaleBetasZeroSNR      bool    `json:"rescale_betas_zero_snr"`
	// SetAlphaToOne is DDIM's: the ᾱ used past the last step is 1 when
	// true, else ᾱ[0].
	SetAlphaToOne bool `json:"set_alpha_to_one"`
}

// DefaultConfig is the constructor defaults of diffusers' DDPMScheduler and
// DDIMScheduler (they agree on every shared key).
func DefaultConfig() Config {
	return Config{
		NumTrainTimesteps:        1000,
		BetaStart:                0.0001,
		BetaEnd:                  0.02,
		BetaSchedule:             "linear",
		VarianceType:             "fixed_small",
		ClipSample:               true,
		ClipSampleRange:          1,
		PredictionType:           "epsilon",
		DynamicThresholdingRatio: 0.995,
		SampleMaxValue:           1,
		TimestepSpacing:          "leading",
		SetAlphaToOne:            true,
	}
}

// ParseConfig decodes a scheduler_config.json body over DefaultConfig.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("scheduler config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads a scheduler_config.json file.
func LoadConfig(path string) (Config, error) {
	return jsonconfig.Load(path, "scheduler config", ParseConfig)
}

// Validate checks the settings shared by DDPM and DDIM.
func (c Config) Validate() error {
	if c.NumTrainTimesteps < 1 {
		return fmt.Errorf("scheduler config: num_train_timesteps %d", c.NumTrainTimesteps)
	}
	if c.TrainedBetas != nil && len(c.TrainedBetas) != c.NumTrainTimesteps {
		return fmt.Errorf("scheduler config: %d trained_betas for %d timesteps", len(c.TrainedBetas), c.NumTrainTimesteps)
	}
	switch c.BetaSchedule {
	case "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid":
	default:
		if c.TrainedBetas == nil {
			return fmt.Errorf("scheduler config: beta_schedule %q is not implemented", c.BetaSchedule)
		}
	}
	switch c.PredictionType {
	case "epsilon", "v_prediction", "sample":
	default:
		return fmt.Errorf("scheduler config: prediction_type %q must be one of epsilon, v_prediction, sample", c.PredictionType)
	}
	switch c.TimestepSpacing {
	case "leading", "trailing", "linspace":
	default:
		return fmt.Errorf("scheduler config: timestep_spacing %q is not supported (leading, trailing, linspace)", c.TimestepSpacing)
	}
	if c.Thresholding {
		return fmt.Errorf("scheduler config: dynamic thresholding is not supported")
	}
	return nil
}
