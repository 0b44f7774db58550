package tagger

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/ramfixture"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
)

// metaState is a checkpoint layout as data-less tensors (full size, no
// memory): what the loader's key handling sees.
func metaState(t *testing.T, layout []layoutKey, rename func(string) string) nn.MapSource {
	t.Helper()
	m := nn.MapSource{}
	for _, k := range layout {
		dt, err := torch.ParseDType(k.DType)
		require.NoError(t, err)
		m[rename(k.Name)] = torch.Unscope(torch.Empty(k.Shape, dt, torch.Meta))
	}
	return m
}

func fixtureConfig(t *testing.T) Config {
	t.Helper()
	cases, err := readTaggerCases()
	require.NoError(t, err)
	vision, err := fixtureVisionConfig()
	require.NoError(t, err)
	cfg, err := Options{TagList: fixturePath("ram/data/ram_tag_list.txt"), Thresholds: fixturePath(filepath.Join("ram", cases.Thresholds)),
		Vision: &vision}.Config()
	require.NoError(t, err)
	return cfg
}

func keep(layout []layoutKey, f func(layoutKey) bool) []layoutKey {
	var out []layoutKey
	for _, k := range layout {
		if f(k) {
			out = append(out, k)
		}
	}
	return out
}

// TestRAMKeyLayout loads the published RAM layout (keys/*.json, full size,
// on the meta device) in the forms the official loader accepts and checks
// that exactly the tagging keys are taken, and that a layout that does not
// fit fails naming the key.
func TestRAMKeyLayout(t *testing.T) {
	testutil.NoLeak(t)
	cfg := fixtureConfig(t)
	layout, err := readLayout("ram/keys/ram_swin_large_14m.model.json")
	require.NoError(t, err)
	var tagging []string
	for _, k := range layout {
		if k.Role == "tagging" {
			tagging = append(tagging, k.Name)
		}
	}
	slices.Sort(tagging)
	manifest, err := detinit.LoadManifest(fixturePath("ram/weights/base_manifest.json"))
	require.NoError(t, err)
	require.Len(t, manifest.Specs, len(tagging), "the tagging keys are the manifest's")

	same := func(s string) string { return s }
	training := func(s string) string {
		if rest, ok := strings.CutPrefix(s, "tagging_head."); ok {
			return "vision_multi." + rest
		}
		return s
	}
	load := func(state nn.MapSource) (*Tagger, error) { return FromRAMState(state, cfg, torch.Meta) }
	for name, state := range map[string]func() nn.MapSource{
		"as listed":          func() nn.MapSource { return metaState(t, layout, same) },
		"vision_multi names": func() nn.MapSource { return metaState(t, layout, training) },
		"tagging keys only": func() nn.MapSource {
			return metaState(t, keep(layout, func(k layoutKey) bool { return k.Role == "tagging" }), same)
		},
		"tied tag_encoder only": func() nn.MapSource {
			return metaState(t, keep(layout, func(k layoutKey) bool { return !strings.HasPrefix(k.Name, "tagging_head.") }), same)
		},
	} {
		t.Run(name, func(t *testing.T) {
			tg, err := load(state())
			require.NoError(t, err)
			defer tg.Close()
			got := slices.Clone(tg.Params().Names)
			slices.Sort(got)
			require.Equal(t, tagging, got)
			for _, k := range got {
				require.Equal(t, manifest.Specs[k].Shape, tg.Params().Get(k).Shape(), k)
			}
		})
	}

	t.Run("window-7 tables are interpolated", func(t *testing.T) {
		st := metaState(t, layout, same)
		k := "visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"
		heads := st[k].Size(1)
		st[k].Close()
		st[k] = torch.Unscope(torch.Empty([]int64{13 * 13, heads}, torch.Float32, torch.Meta))
		tg, err := load(st)
		require.NoError(t, err)
		require.Equal(t, manifest.Specs[k].Shape, tg.Params().Get(k).Shape())
		tg.Close()
	})
	t.Run("a missing key is named", func(t *testing.T) {
		st := metaState(t, layout, same)
		st["image_proj.weight"].Close()
		delete(st, "image_proj.weight")
		_, err := load(st)
		require.ErrorIs(t, err, nn.ErrWeights)
		require.ErrorContains(t, err, "image_proj.weight")
	})
	t.Run("another shape is named", func(t *testing.T) {
		st := metaState(t, layout, same)
		st["visual_encoder.patch_embed.proj.weight"].Close()
		st["visual_encoder.patch_embed.proj.weight"] = torch.Unscope(torch.Empty([]int64{128, 3, 4, 4}, torch.Float32, torch.Meta))
		_, err := load(st)
		require.ErrorContains(t, err, "visual_encoder.patch_embed.proj.weight: checkpoint [128 3 4 4]")
	})
	t.Run("another model", func(t *testing.T) {
		st := nn.MapSource{"conv_in.weight": torch.Unscope(torch.Empty([]int64{320, 4, 3, 3}, torch.Float32, torch.Meta))}
		_, err := load(st)
		require.ErrorIs(t, err, ErrLayout)
	})
}

// TestDAPEKeyLayout merges the published DAPE layout (meta device) and
// rejects files without the tagging pairs or of another rank.
func TestDAPEKeyLayout(t *testing.T) {
	testutil.NoLeak(t)
	cfg := fixtureConfig(t)
	ram, err := readLayout("ram/keys/ram_swin_large_14m.model.json")
	require.NoError(t, err)
	dape, err := readLayout("ram/keys/DAPE.json")
	require.NoError(t, err)
	same := func(s string) string { return s }
	newTagger := func() *Tagger {
		tg, err := FromRAMState(metaState(t, ram, same), cfg, torch.Meta)
		require.NoError(t, err)
		return tg
	}
	lora := func() nn.MapSource { return metaState(t, dape, same) }

	tg := newTagger()
	src := lora()
	require.NoError(t, tg.MergeDAPE(src))
	src.Close()
	tg.Close()

	for name, edit := range map[string]func(nn.MapSource){
		"no tagging pair": func(m nn.MapSource) {
			for k, v := range m {
				if !strings.HasPrefix(k, "tag_encoder.") && !strings.HasPrefix(k, "text_decoder.") {
					v.Close()
					delete(m, k)
				}
			}
		},
		"one pair missing": func(m nn.MapSource) {
			k := "tagging_head.encoder.layer.1.crossattention.self.key.lora_B"
			m[k].Close()
			delete(m, k)
		},
		"another rank": func(m nn.MapSource) {
			k := "visual_encoder.layers.3.blocks.1.attn.qkv.lora_A"
			c := m[k].Size(1)
			m[k].Close()
			m[k] = torch.Unscope(torch.Empty([]int64{32, c}, torch.Float32, torch.Meta))
		},
	} {
		t.Run(name, func(t *testing.T) {
			tg := newTagger()
			defer tg.Close()
			src := lora()
			defer src.Close()
			edit(src)
			err := tg.MergeDAPE(src)
			require.Error(t, err)
			t.Log(err)
		})
	}
}

// TestWrittenLayouts: the package's model was loaded from files holding
// every key of both published layouts (fixture setup).
func TestWrittenLayouts(t *testing.T) {
	fm := fixture(t)
	raw, err := os.ReadFile(fixturePath("ram/keys/summary.json"))
	require.NoError(t, err)
	var sum struct {
		RAM struct {
			All struct {
				Keys int `json:"keys"`
			} `json:"all"`
		} `json:"ram_checkpoint_model"`
		DAPE struct {
			All struct {
				Keys int `json:"keys"`
			} `json:"all"`
		} `json:"dape"`
	}
	require.NoError(t, json.Unmarshal(raw, &sum))
	require.Equal(t, sum.RAM.All.Keys, fm.ramKeys)
	require.Equal(t, sum.DAPE.All.Keys, fm.dapeKeys)
}

// TestLoRARegenerated: the LoRA manifest and seed rebuild the shipped
// lora.safetensors bit for bit.
func TestLoRARegenerated(t *testing.T) {
	testutil.NoLeak(t)
	w, err := ramfixture.Read(fixturePath("ram/weights"))
	require.NoError(t, err)
	regen, err := w.LoRAWeights()
	require.NoError(t, err)
	defer regen.Close()
	require.NoError(t, ramfixture.Check(regen, w.LoRA.CheckValues))
	shipped, err := loadShippedLoRA(w)
	require.NoError(t, err)
	defer shipped.Close()
	require.Equal(t, shipped.Names(), regen.Names())
	for _, k := range shipped.Names() {
		testutil.AssertEqual(t, k, regen[k], shipped[k])
	}
}
