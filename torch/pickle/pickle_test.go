package pickle

import (
	"archive/zip"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/torch/safetensors"
)

// fixture returns the path of a file of the shared torch fixtures:
// $DP2O_FIXTURES/torch/rel when DP2O_FIXTURES is set, else testdata/rel.
func fixture(tb testing.TB, rel string) string {
	tb.Helper()
	if dir := os.Getenv("DP2O_FIXTURES"); dir != "" {
		return filepath.Join(dir, "torch", filepath.FromSlash(rel))
	}
	return filepath.Join("testdata", filepath.FromSlash(rel))
}

var pthFixtures = []struct {
	file   string
	key    string
	prefix string
	extra  map[string]any
}{
	{"plain_state_dict.pth", "", "", map[string]any{}},
	{"nested_model.pth", "model", "", map[string]any{"epoch": 3, "optimizer": nil}},
	{"nested_state_dict_module_prefix.pth", "state_dict", "module.", map[string]any{}},
}

func TestLoadFixtures(t *testing.T) {
	want, err := safetensors.Open(fixture(t, "pth_expected.safetensors"))
	require.NoError(t, err)
	defer want.Close()
	require.NotEmpty(t, want.Names())

	for _, fx := range pthFixtures {
		t.Run(fx.file, func(t *testing.T) {
			sd, err := Load(fixture(t, fx.file))
			require.NoError(t, err)
			require.Equal(t, fx.key, sd.Key)
			require.Equal(t, fx.prefix, sd.StrippedPrefix)
			require.Equal(t, fx.extra, sd.Extra)
			require.Len(t, sd.Tensors, len(want.Names()))
			require.ElementsMatch(t, want.Names(), sd.Names())
			for _, name := range want.Names() {
				info, _ := want.Info(name)
				data, err := want.Data(name)
				require.NoError(t, err)
				got, ok := sd.Get(name)
				require.True(t, ok, "tensor %q missing", name)
				require.Equal(t, name, got.Name)
				require.Equal(t, string(info.DType), got.DType, name)
				require.Equal(t, info.Shape, got.Shape, name)
				require.Equal(t, data, got.Data, name)
			}
		})
	}
}

func TestLoadOptions(t *testing.T) {
	sd, err := Load(fixture(t, "nested_state_dict_module_prefix.pth"), WithStripPrefix(""))
	require.NoError(t, err)
	require.Empty(t, sd.StrippedPrefix)
	for _, name := range sd.Names() {
		require.True(t, strings.HasPrefix(name, "module."), name)
	}
	_, ok := sd.Get("module.conv.weight")
	require.True(t, ok)

	sd, err = Load(fixture(t, "nested_state_dict_module_prefix.pth"), WithStripPrefix("module.conv."))
	require.NoError(t, err)
	require.Empty(t, sd.StrippedPrefix, "not every key has the prefix")

	sd, err = Load(fixture(t, "nested_model.pth"), WithKey("model"))
	require.NoError(t, err)
	require.Equal(t, "model", sd.Key)
	require.Len(t, sd.Tensors, 8)

	sd, err = Load(fixture(t, "plain_state_dict.pth"), WithKey(""))
	require.NoError(t, err)
	require.Len(t, sd.Tensors, 8)

	for key, msg := range map[string]string{
		"nope":  `checkpoint has no key "nope" (keys: "model", "epoch", "optimizer")`,
		"epoch": `checkpoint key "epoch" is not a dict of tensors`,
		"":      `checkpoint is not a dict of tensors`,
	} {
		_, err = Load(fixture(t, "nested_model.pth"), WithKey(key))
		require.Error(t, err)
		require.Contains(t, err.Error(), msg)
	}
}

func TestTruncated(t *testing.T) {
	path := fixture(t, "bad/truncated.pth")
	_, err := Load(path)
	require.Error(t, err)
	require.Contains(t, err.Error(), "pickle: "+path+": ")
	require.Contains(t, err.Error(), "not a valid zip archive")
}

func TestMalicious(t *testing.T) {
	path := fixture(t, "bad/malicious.pth")

	// Find the file the payload would create (README: "it would write a
	// file under /tmp"), e.g. "echo pwned > /tmp/dp2o_pwned".
	zr, err := zip.OpenReader(path)
	require.NoError(t, err)
	var pkl []byte
	for _, f := range zr.File {
		if strings.HasSuffix(f.Name, "/data.pkl") {
			rc, err := f.Open()
			require.NoError(t, err)
			pkl, err = io.ReadAll(rc)
			require.NoError(t, err)
			rc.Close()
		}
	}
	zr.Close()
	m := regexp.MustCompile(`>\s*(/[^\s'"]+)`).FindSubmatch(pkl)
	require.NotNil(t, m, "no redirection target in the malicious pickle")
	target := string(m[1])
	t.Logf("payload target: %s", target)
	if err := os.Remove(target); err != nil {
		require.ErrorIs(t, err, os.ErrNotExist)
	}

	_, err = Load(path)
	require.Error(t, err)
	require.Contains(t, err.Error(), `refused global "posix.system"`)
	var refused *RefusedGlobalError
	require.ErrorAs(t, err, &refused)
	require.Equal(t, RefusedGlobalError{Module: "posix", Name: "system"}, *refused)
	require.NoFileExists(t, target)
}

func TestLegacyFormat(t *testing.T) {
	dir := t.TempDir()
	// The start of a legacy torch.save file: PROTO 2, LONG1 magic number.
	legacy := filepath.Join(dir, "legacy.pth")
	require.NoError(t, os.WriteFile(legacy, []byte("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."), 0o644))
	_, err := Load(legacy)
	require.ErrorIs(t, err, ErrLegacyFormat)
	require.Contains(t, err.Error(), "legacy torch.save format not supported")

	other := filepath.Join(dir, "other.pth")
	require.NoError(t, os.WriteFile(other, []byte("hello"), 0o644))
	_, err = Load(other)
	require.ErrorContains(t, err, "not a PyTorch zip checkpoint")

	_, err = Load(filepath.Join(dir, "missing.pth"))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = Load(dir)
	require.ErrorContains(t, err, "not a regular file")
}

// rewriteZip copies the fixture zip src into a new file, passing every entry
// through edit (which may rename, change or drop it) and adding extra.
func rewriteZip(t *testing.T, src string, edit func(name string, data []byte) (string, []byte), extra map[string][]byte) string {
	t.Helper()
	zr, err := zip.OpenReader(src)
	require.NoError(t, err)
	defer zr.Close()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	add := func(name string, data []byte) {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		require.NoError(t, err)
		_, err = w.Write(data)
		require.NoError(t, err)
	}
	for _, f := range zr.File {
		rc, err := f.Open()
		require.NoError(t, err)
		data, err := io.ReadAll(rc)
		require.NoError(t, err)
		rc.Close()
		if name, data := edit(f.Name, data); name != "" {
			add(name, data)
		}
	}
	for name, data := range extra {
		add(name, data)
	}
	require.NoError(t, zw.Close())
	path := filepath.Join(t.TempDir(), "edited.pth")
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	return path
}

func TestCorruptArchives(t *testing.T) {
	src := fixture(t, "plain_state_dict.pth")
	keep := func(name string, data []byte) (string, []byte) { return name, data }
	cases := []struct {
		want  string
		edit  func(string, []byte) (string, []byte)
		extra map[string][]byte
	}{
		{`storage "6": plain_state_dict/data/6 holds 90 bytes, want 96`,
			func(n string, d []byte) (string, []byte) {
				if strings.HasSuffix(n, "/data/6") {
					return n, d[:90]
				}
				return n, d
			}, nil},
		{`storage "0": plain_state_dict/data/0 not found in the zip archive`,
			func(n string, d []byte) (string, []byte) {
				if strings.HasSuffix(n, "/data/0") {
					return "", nil
				}
				return n, d
			}, nil},
		{`unsupported byteorder "big"`, keep, map[string][]byte{"plain_state_dict/byteorder": []byte("big")}},
		{`several data.pkl in the zip archive`, keep, map[string][]byte{"other/data.pkl": []byte("\x80\x02}.")}},
		{`no <dir>/data.pkl in the zip archive`,
			func(n string, d []byte) (string, []byte) { return "x" + strings.ReplaceAll(n, "/", "_"), d }, nil},
		{`data.pkl: pickle data ends before STOP`,
			func(n string, d []byte) (string, []byte) {
				if strings.HasSuffix(n, "data.pkl") {
					return n, d[:len(d)/2]
				}
				return n, d
			}, nil},
	}
	for _, c := range cases {
		_, err := Load(rewriteZip(t, src, c.edit, c.extra))
		require.Error(t, err, c.want)
		require.Contains(t, err.Error(), c.want)
	}

	// Flipped bytes are caught by the zip CRC-32.
	raw, err := os.ReadFile(src)
	require.NoError(t, err)
	i := bytes.Index(raw, []byte("conv.weight"))
	require.Positive(t, i)
	raw[i] = 'k'
	corrupt := filepath.Join(t.TempDir(), "corrupt.pth")
	require.NoError(t, os.WriteFile(corrupt, raw, 0o644))
	_, err = Load(corrupt)
	require.ErrorContains(t, err, "plain_state_dict/data.pkl: corrupt zip entry: zip: checksum error")

	// A little-endian byteorder entry is accepted.
	sd, err := Load(rewriteZip(t, src, keep, map[string][]byte{"plain_state_dict/byteorder": []byte("little")}))
	require.NoError(t, err)
	require.Len(t, sd.Tensors, 8)
}
