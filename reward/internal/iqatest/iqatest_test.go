package iqatest

import (
	"os"
	"path/filepath"
	"testing"
)

// TestNameForms decodes pyiqa_name and mode in their one-metric (string)
// and several-metric (list, map) forms.
func TestNameForms(t *testing.T) {
	dir := t.TempDir()
	write := func(sub, body string) {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, sub, "cases.json"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("one", `{"pyiqa_name": "lpips", "mode": "FR", "cases": [{"name": "a"}]}`)
	write("two", `{"pyiqa_name": ["afine_fr", "afine_nr"], "mode": {"afine_fr": "FR", "afine_nr": "NR"}, "cases": [{"name": "a"}]}`)
	t.Setenv("DP2O_FIXTURES", dir)
	one := Load(t, "one")
	if one.PyiqaName != "lpips" || one.Mode != "FR" || len(one.PyiqaNames) != 1 || one.Modes["lpips"] != "FR" {
		t.Errorf("one: %+v", one)
	}
	two := Load(t, "two")
	if two.PyiqaName != "" || two.Mode != "" || len(two.PyiqaNames) != 2 || two.Modes["afine_nr"] != "NR" {
		t.Errorf("two: %+v", two)
	}
}
