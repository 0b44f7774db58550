package unet

import (
	"encoding/json"
	"fmt"
	"slices"
)

// IntList is a config value that diffusers accepts as an int or as a list
// of ints (one per down block). A single int is stored as a one-element
// list; null leaves it nil.
type IntList []int

// UnmarshalJSON accepts an int, a list of ints or null.
func (l *IntList) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case nil:
		*l = nil
	case float64:
		*l = IntList{int(x)}
	case []any:
		out := make(IntList, len(x))
		for i, e := range x {
			f, ok := e.(float64)
			if !ok {
				return fmt.Errorf("want an int or a list of ints, got %s", b)
			}
			out[i] = int(f)
		}
		*l = out
	default:
		return fmt.Errorf("want an int or a list of ints, got %s", b)
	}
	return nil
}

// MarshalJSON writes a one-element list as a plain int, as diffusers does.
func (l IntList) MarshalJSON() ([]byte, error) {
	if l == nil {
		return []byte("null"), nil
	}
	if len(l) == 1 {
		return json.Marshal(l[0])
	}
	return json.Marshal([]int(l))
}

// PerBlock expands the value to n entries: a single int is repeated, a list
// must have n entries.
func (l IntList) PerBlock(n int, name string) ([]int, error) {
	switch len(l) {
	case 0:
		return nil, fmt.Errorf("unet config: %s is not set", name)
	case 1:
		if n == 1 {
			return []int{l[0]}, nil
		}
		out := make([]int, n)
		for i := range out {
			out[i] = l[0]
		}
		return out, nil
	case n:
		return slices.Clone(l), nil
	}
	return nil, fmt.Errorf("unet config: %s has %d entries for %d down blocks", name, len(l), n)
}

// BoolList is a config value given as a bool or as a list of bools.
type BoolList []bool

// UnmarshalJSON accepts a bool, a list of bools or null.
func (l *BoolList) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case nil:
		*l = nil
	case bool:
		*l = BoolList{x}
	case []any:
		out := make(BoolList, len(x))
		for i, e := range x {
			f, ok := e.(bool)
			if !ok {
				return fmt.Errorf("want a bool or a list of bools, got %s", b)
			}
			out[i] = f
		}
		*l = out
	default:
		return fmt.Errorf("want a bool or a list of bools, got %s", b)
	}
	return nil
}

// MarshalJSON writes a one-element list as a plain bool.
func (l BoolList) MarshalJSON() ([]byte, error) {
	if len(l) == 1 {
		return json.Marshal(l[0])
	}
	return json.Marshal([]bool(l))
}

// PerBlock expands the value to n entries (nil: all false).
func (l BoolList) PerBlock(n int) ([]bool, error) {
	out := make([]bool, n)
	switch len(l) {
	case 0:
	case 1:
		for i := range out {
			out[i] = l[0]
		}
	case n:
		copy(out, l)
	default:
		return nil, fmt.Errorf("unet config: only_cross_attention has %d entries for %d down blocks", len(l), n)
	}
	return out, nil
}
