package pickle

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nlpodyssey/gopickle/types"
)

// scriptPrefix is the module of the classes a TorchScript archive defines
// (its code/ folder); they are data-only here.
const scriptPrefix = "__torch__"

// scriptClass is a class of the archive's own code. Creating it (NEWOBJ)
// gives a scriptObject; no code of the archive is ever run.
type scriptClass struct{ name string }

// PyNew implements types.PyNewable.
func (c *scriptClass) PyNew(args ...any) (any, error) {
	if len(args) != 0 {
		return nil, fmt.Errorf("%s: unexpected constructor arguments", c.name)
	}
	return &scriptObject{class: c.name}, nil
}

// scriptObject is a module of the archive: its attributes as BUILD set
// them (parameters, buffers, sub-modules and plain values, in order).
type scriptObject struct {
	class string
	attrs []entry
}

// PySetState implements types.PyStateSettable.
func (o *scriptObject) PySetState(state any) error {
	es, ok := dictEntries(state)
	if !ok {
		return fmt.Errorf("%s: state is a %s, not a dict", o.class, typeName(state))
	}
	o.attrs = es
	return nil
}

var (
	_ types.PyNewable       = (*scriptClass)(nil)
	_ types.PyStateSettable = (*scriptObject)(nil)
)

func allowedScript(module, name string) bool {
	return allowed(module, name) || module == scriptPrefix || strings.HasPrefix(module, scriptPrefix+".")
}

func findScriptClass(module, name string) (any, error) {
	if module == scriptPrefix || strings.HasPrefix(module, scriptPrefix+".") {
		return &scriptClass{name: module + "." + name}, nil
	}
	return findClass(module, name)
}

// maxScriptDepth bounds the module nesting walked.
const maxScriptDepth = 64

// LoadTorchScript reads the tensors of a TorchScript archive
// (torch.jit.save; OpenAI's CLIP releases are such archives) without
// running any of its code: the archive's data.pkl is decoded with its own
// module classes as plain attribute holders, and every tensor attribute
// is returned under its dotted path from the root module ("visual.conv1.weight").
// That is every parameter and buffer of state_dict(), plus tensors held as
// plain attributes (which a caller drops by name). Non-tensor attributes
// are skipped.
func LoadTorchScript(path string) (*StateDict, error) {
	var sd *StateDict
	err := withArchive(path, func(pkl []byte, a *archive) error {
		obj, err := unpickleWith(pkl, allowedScript, findScriptClass)
		if err != nil {
			return fmt.Errorf("data.pkl: %w", err)
		}
		root, ok := obj.(*scriptObject)
		if !ok {
			return fmt.Errorf("archive root is a %s, not a TorchScript module", typeName(obj))
		}
		var refs []*tensorRef
		var names []string
		var walk func(o *scriptObject, prefix string, depth int) error
		walk = func(o *scriptObject, prefix string, depth int) error {
			if depth > maxScriptDepth {
				return errors.New("modules nested too deeply")
			}
			for _, e := range o.attrs {
				k, ok := e.key.(string)
				if !ok {
					continue
				}
				switch v := e.value.(type) {
				case *tensorRef:
					refs, names = append(refs, v), append(names, prefix+k)
				case *scriptObject:
					if err := walk(v, prefix+k+".", depth+1); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err := walk(root, "", 0); err != nil {
			return err
		}
		sd = &StateDict{Extra: map[string]any{}, index: map[string]int{}}
		handedOut := map[string]bool{}
		for i, t := range refs {
			if _, dup := sd.index[names[i]]; dup {
				return fmt.Errorf("tensor %q twice", names[i])
			}
			data, aliased, err := t.materialize(a, !handedOut[t.storage.key])
			if err != nil {
				return fmt.Errorf("tensor %q: %w", names[i], err)
			}
			if aliased {
				handedOut[t.storage.key] = true
			}
			sd.index[names[i]] = len(sd.Tensors)
			sd.Tensors = append(sd.Tensors, Tensor{Name: names[i], DType: t.storage.dtype, Shape: slices.Clone(t.shape), Data: data})
		}
		return nil
	})
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	return sd, nil
}
