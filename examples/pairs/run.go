package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/reward"
)

// labels is the input file.
type labels struct {
	Metrics []struct {
		Name           string `json:"name"`
		Kind           string `json:"kind"`
		HigherIsBetter *bool  `json:"higher_is_better"`
	} `json:"metrics"`
	Groups []preference.Group `json:"groups"`
}

func readLabels(path string) ([]preference.Group, []reward.Metric, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var l labels
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var ms []reward.Metric
	for i, m := range l.Metrics {
		if m.Kind != "fr" && m.Kind != "nr" {
			return nil, nil, fmt.Errorf("%s: metric %d (%q): kind %q, want fr or nr", path, i, m.Name, m.Kind)
		}
		if m.HigherIsBetter == nil {
			return nil, nil, fmt.Errorf("%s: metric %d (%q): higher_is_better missing", path, i, m.Name)
		}
		ms = append(ms, reward.Metric{Name: m.Name, FullReference: m.Kind == "fr", HigherIsBetter: *m.HigherIsBetter})
	}
	if len(l.Groups) == 0 {
		return nil, nil, fmt.Errorf("%s: no groups", path)
	}
	return l.Groups, ms, nil
}

func run(c *cli.Context) error {
	groups, metrics, err := readLabels(c.String("labels"))
	if err != nil {
		return err
	}
	pf, err := preference.BuildPairs(groups, metrics, c.Int("top_n"))
	if err != nil {
		return err
	}
	if err := pf.Save(c.String("output")); err != nil {
		return err
	}
	wmin, wmax := pf.Pairs[0].Weight, pf.Pairs[0].Weight
	for _, p := range pf.Pairs {
		wmin, wmax = min(wmin, p.Weight), max(wmax, p.Weight)
	}
	fmt.Fprintf(c.App.Writer, "pairs: %d groups × %d candidates → %d pairs (N = %d), weights %.4g…%.4g, μσ = %.4g → %s\n",
		len(pf.Groups), pf.CandidatesPerGroup, len(pf.Pairs), pf.TopN, wmin, wmax, pf.MuSigma, c.String("output"))
	return nil
}
