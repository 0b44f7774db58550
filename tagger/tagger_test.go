package tagger

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestFixtureCases runs every case of fixtures/ram/tagger end to end (PNG →
// preprocessing → RAM + DAPE → decisions → prompt) and compares every
// intermediate in forward order, then the decisions and strings exactly.
func TestFixtureCases(t *testing.T) {
	fm := fixture(t)
	tg := fm.tagger
	testutil.NoLeak(t)
	require.Equal(t, fm.cases.LoRA.R, LoRARank)
	require.Equal(t, fm.cases.LoRA.Alpha, LoRAAlpha)
	require.Equal(t, fm.cases.LoRA.Scaling, LoRAScale)
	for _, c := range fm.cases.Cases {
		t.Run(c.Name, func(t *testing.T) {
			want := testutil.Tensors(t, testutil.Fixture(t, filepath.Join("ram/tagger", c.Tensors)))
			for name, shape := range c.Shapes {
				require.Contains(t, want, name)
				require.Equal(t, shape, want[name].Shape(), name)
			}
			inputs := testutil.Tensors(t, testutil.Fixture(t, filepath.Join("ram", c.pixels)))

			// The legacy (non-antialiased) resize of the same PNG.
			img, err := loadCaseImage(c)
			require.NoError(t, err)
			if noaa, ok := inputs[c.pixelsName+"_noaa.head"]; ok {
				raw, err := ToTensor(img)
				require.NoError(t, err)
				legacy, err := Normalize(raw, tg.Config.Vision.ImageSize, false)
				raw.Close()
				require.NoError(t, err)
				head := legacy.Narrow(2, 0, noaa.Size(2))
				testutil.AssertClose(t, c.pixelsName+"_noaa.head", head, noaa, 1e-5, 0)
				head.Close()
				legacy.Close()
			}

			// The model, every intermediate the fixture has.
			got := map[string]*torch.Tensor{}
			defer func() {
				for _, v := range got {
					v.Close()
				}
			}()
			probe := torch.FromSlice(c.ProbeTags, int64(len(c.ProbeTags)))
			defer probe.Close()
			// The user's path: the decoded PNG through Tag (preprocessing,
			// RAM + DAPE, decisions, prompt), every intermediate tapped.
			want["pixel_values"] = inputs[c.pixelsName]
			tg.Tap = func(name string, v *torch.Tensor) {
				if _, ok := want[name]; ok {
					got[name] = torch.Unscope(v.Clone())
				}
				if _, ok := want[name+".probe"]; ok {
					got[name+".probe"] = torch.Unscope(v.IndexSelect(1, probe))
				}
			}
			r, err := tg.Tag(img)
			tg.Tap = nil
			require.NoError(t, err)
			res := []Result{r}
			testutil.AssertClose(t, "pixel_values", got["pixel_values"], want["pixel_values"], 1e-5, 0)
			order := []string{"image_embeds_raw", "image_embeds", "label_feat.probe"}
			for l := range tg.Head.layers {
				order = append(order, fmt.Sprintf("tagging_head.layer.%d.crossattention.probe", l), fmt.Sprintf("tagging_head.layer.%d.probe", l))
			}
			order = append(order, "logits")
			compared := 0
			for _, name := range order {
				w, ok := want[name]
				if !ok {
					continue
				}
				require.Contains(t, got, name)
				testutil.AssertClose(t, name, got[name], w, 1e-4*maxAbs(w), 0)
				compared++
			}
			activations := 0
			for name := range want {
				if name != "pixel_values" && name != "probs" && name != "logits_base" && !strings.HasPrefix(name, "decision") && !strings.HasPrefix(name, "merged.") {
					activations++
				}
			}
			require.Equal(t, activations, compared, "every activation of the fixture is compared")
			testutil.AssertClose(t, "probs", got["probs"], want["probs"], 1e-5, 0)

			// Decisions, indices and the prompt, exactly.
			n := len(tg.Config.Tags)
			require.Equal(t, want["decision"].Bytes(), decisionBytes(n, res[0].Indices), "decision")
			require.Equal(t, c.TagIndices, res[0].Indices)
			require.Len(t, res[0].Indices, c.NTags)
			require.Equal(t, c.Tags, res[0].Prompt)
			file, err := os.ReadFile(testutil.Fixture(t, filepath.Join("ram/tagger", c.TagsFile)))
			require.NoError(t, err)
			require.Equal(t, string(file), res[0].Prompt)

			// The same logits against the variant thresholds.
			thr, err := ReadThresholds(testutil.Fixture(t, filepath.Join("ram", c.Variant.Thresholds)), n)
			require.NoError(t, err)
			thrT := torch.FromSlice(thr, int64(n))
			defer thrT.Close()
			probs, passed, err := decide(got["logits"], thrT)
			require.NoError(t, err)
			probs.Close()
			require.Equal(t, want["decision_variant"].Bytes(), decisionBytes(n, passed[0]), "decision_variant")
			require.Equal(t, c.Variant.TagIndices, passed[0])
			require.Equal(t, c.Variant.Tags, joinIndices(tg.Config.Tags, passed[0]))

			// RAM without DAPE (logits kept from before the merge): the
			// decision is compared where its margin allows.
			base := fm.baseLogits[c.Name]
			testutil.AssertClose(t, "logits_base", base, want["logits_base"], 1e-4*maxAbs(want["logits_base"]), 0)
			if c.Base.MinMargin > 1e-5 {
				probs, passed, err := tg.Decide(base)
				require.NoError(t, err)
				probs.Close()
				require.Equal(t, want["decision_base"].Bytes(), decisionBytes(n, passed[0]), "decision_base")
				require.Equal(t, c.Base.Tags, joinIndices(tg.Config.Tags, passed[0]))
			}

			// The merged weights.
			checked := 0
			for name, w := range want {
				key, ok := strings.CutPrefix(name, "merged.")
				if !ok {
					continue
				}
				key, head := strings.CutSuffix(key, ".head")
				p := tg.Params().Get(key)
				require.NotNil(t, p, key)
				if head {
					p = p.Narrow(0, 0, w.Size(0))
					defer p.Close()
				}
				testutil.AssertClose(t, name, p, w, 1e-6, 0)
				checked++
			}
			require.Positive(t, checked)
		})
	}
}
