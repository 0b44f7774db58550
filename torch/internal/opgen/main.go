// Command opgen generates the C++ shim functions and the Go wrappers of the
// torch package from the op tables in torch/ops/*.def, so that the two layers
// stay in step. Run it with `go generate ./torch` (or `make generate`).
//
// Each non-comment line of a table declares one op:
//
//	GoName c_name(arg Type, ...) Ret = C++ expression
//
// Argument types: T (tensor), T? (optional tensor, nil allowed), I (int64),
// F (float64), B (bool), S (scalar, float64), IL (int list), IL? (optional
// int list, nil means "not given"), D (dtype), TL (tensor list), G (optional
// generator). Ret is T, TL, T2, T3, void, I, F or B. Arguments are visible to
// the C++ expression under their own names, already converted to ATen types.
// When the first argument is `self T` the Go wrapper is a method of *Tensor.
// A `void` op's expression is a statement; its Go wrapper returns nothing.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"go/format"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

type arg struct{ name, typ string }

type op struct {
	goName, cName string
	args          []arg
	ret           string
	expr          string
	doc           string
	file          string
	line          int
}

var lineRE = regexp.MustCompile(`^(\w+)\s+(\w+)\((.*)\)\s+(\w+)\s*=\s*(.+)$`)

func parse(path string) ([]op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ops []op
	var doc []string
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		l := strings.TrimSpace(sc.Text())
		if l == "" {
			doc = nil
			continue
		}
		if strings.HasPrefix(l, "#") {
			doc = append(doc, strings.TrimSpace(strings.TrimPrefix(l, "#")))
			continue
		}
		m := lineRE.FindStringSubmatch(l)
		if m == nil {
			return nil, fmt.Errorf("%s:%d: cannot parse %q", path, n, l)
		}
		o := op{goName: m[1], cName: m[2], ret: m[4], expr: m[5], file: path, line: n}
		if len(doc) > 0 {
			o.doc = strings.Join(doc, " ")
		}
		doc = nil
		if s := strings.TrimSpace(m[3]); s != "" {
			for _, a := range strings.Split(s, ",") {
				p := strings.Fields(strings.TrimSpace(a))
				if len(p) != 2 {
					return nil, fmt.Errorf("%s:%d: bad argument %q", path, n, a)
				}
				o.args = append(o.args, arg{p[0], p[1]})
			}
		}
		ops = append(ops, o)
	}
	return ops, sc.Err()
}

// cParams returns the C parameter list of one argument.
func cParams(a arg) []string {
	switch a.typ {
	case "T", "T?":
		return []string{"dp2o_tensor " + a.name + "_"}
	case "I":
		return []string{"int64_t " + a.name}
	case "F", "S":
		return []string{"double " + a.name + "_"}
	case "B":
		return []string{"int " + a.name + "_"}
	case "D":
		return []string{"int " + a.name + "_"}
	case "IL", "IL?":
		return []string{"const int64_t *" + a.name + "_p", "int " + a.name + "_n"}
	case "TL":
		return []string{"dp2o_tensor *" + a.name + "_p", "int " + a.name + "_n"}
	case "G":
		return []string{"dp2o_gen " + a.name + "_"}
	}
	panic("unknown type " + a.typ)
}

// cLocal declares the ATen-typed local for one argument.
func cLocal(a arg) string {
	n := a.name
	switch a.typ {
	case "T":
		return fmt.Sprintf("const at::Tensor &%s = dp2o::T(%s_);", n, n)
	case "T?":
		return fmt.Sprintf("c10::optional<at::Tensor> %s = dp2o::opt_tensor(%s_);", n, n)
	case "I":
		return ""
	case "F":
		return fmt.Sprintf("double %s = %s_;", n, n)
	case "S":
		return fmt.Sprintf("at::Scalar %s(%s_);", n, n)
	case "B":
		return fmt.Sprintf("bool %s = %s_ != 0;", n, n)
	case "D":
		return fmt.Sprintf("at::ScalarType %s = static_cast<at::ScalarType>(%s_);", n, n)
	case "IL":
		return fmt.Sprintf("at::IntArrayRef %s(%s_p, %s_n);", n, n, n)
	case "IL?":
		return fmt.Sprintf("at::OptionalIntArrayRef %s = %s_n < 0 ? at::OptionalIntArrayRef() : at::OptionalIntArrayRef(at::IntArrayRef(%s_p, %s_n));", n, n, n, n)
	case "TL":
		return fmt.Sprintf("std::vector<at::Tensor> %s = dp2o::tensors_of(%s_p, %s_n);", n, n, n)
	case "G":
		return fmt.Sprintf("c10::optional<at::Generator> %s = %s_ ? c10::optional<at::Generator>(*static_cast<at::Generator *>(%s_)) : c10::nullopt;", n, n, n)
	}
	panic("unknown type " + a.typ)
}

func cOuts(ret string) []string {
	switch ret {
	case "T":
		return nil // returned by value in a dp2o_result (see cSig)
	case "TL":
		return []string{"dp2o_tensor **out", "int *out_n"}
	case "T2":
		return []string{"dp2o_tensor *out0", "dp2o_tensor *out1"}
	case "T3":
		return []string{"dp2o_tensor *out0", "dp2o_tensor *out1", "dp2o_tensor *out2"}
	case "I":
		return []string{"int64_t *out"}
	case "F":
		return []string{"double *out"}
	case "B":
		return []string{"int *out"}
	case "void":
		return nil
	}
	panic("unknown return " + ret)
}

func cSig(o op) string {
	var ps []string
	for _, a := range o.args {
		ps = append(ps, cParams(a)...)
	}
	ps = append(ps, cOuts(o.ret)...)
	if len(ps) == 0 {
		ps = []string{"void"}
	}
	// A single tensor comes back by value with the error, not through an
	// out parameter: a Go pointer argument costs cgo a check per call.
	if o.ret == "T" {
		return fmt.Sprintf("dp2o_result dp2o_%s(%s)", o.cName, strings.Join(ps, ", "))
	}
	return fmt.Sprintf("dp2o_err dp2o_%s(%s)", o.cName, strings.Join(ps, ", "))
}

func cBody(o op) string {
	var b strings.Builder
	try, catch := "DP2O_TRY", "DP2O_CATCH"
	if o.ret == "T" {
		try, catch = "DP2O_TRY_R", "DP2O_CATCH_R"
	}
	fmt.Fprintf(&b, "%s {\n  %s\n", cSig(o), try)
	for _, a := range o.args {
		if l := cLocal(a); l != "" {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	switch o.ret {
	case "T":
		fmt.Fprintf(&b, "  r_.t = dp2o::wrap(%s);\n", o.expr)
	case "TL":
		fmt.Fprintf(&b, "  *out = dp2o::out_list(%s, out_n);\n", o.expr)
	case "T2", "T3":
		fmt.Fprintf(&b, "  auto r = %s;\n", o.expr)
		fmt.Fprintf(&b, "  *out0 = dp2o::wrap(std::get<0>(r));\n  *out1 = dp2o::wrap(std::get<1>(r));\n")
		if o.ret == "T3" {
			fmt.Fprintf(&b, "  *out2 = dp2o::wrap(std::get<2>(r));\n")
		}
	case "I":
		fmt.Fprintf(&b, "  *out = static_cast<int64_t>(%s);\n", o.expr)
	case "F":
		fmt.Fprintf(&b, "  *out = static_cast<double>(%s);\n", o.expr)
	case "B":
		fmt.Fprintf(&b, "  *out = (%s) ? 1 : 0;\n", o.expr)
	case "void":
		fmt.Fprintf(&b, "  %s;\n", strings.TrimSuffix(o.expr, ";"))
	}
	fmt.Fprintf(&b, "  %s\n}\n", catch)
	return b.String()
}

var goKeywords = map[string]bool{"type": true, "range": true, "func": true, "map": true, "chan": true, "default": true}

func goName(n string) string {
	if n == "self" {
		return "t"
	}
	if goKeywords[n] {
		return n + "_"
	}
	return n
}

func goType(t string) string {
	switch t {
	case "T", "T?":
		return "*Tensor"
	case "I":
		return "int64"
	case "F", "S":
		return "float64"
	case "B":
		return "bool"
	case "D":
		return "DType"
	case "IL", "IL?":
		return "[]int64"
	case "TL":
		return "[]*Tensor"
	case "G":
		return "*Generator"
	}
	panic(t)
}

func goRet(r string) string {
	switch r {
	case "T":
		return "*Tensor"
	case "TL":
		return "[]*Tensor"
	case "T2":
		return "(*Tensor, *Tensor)"
	case "T3":
		return "(*Tensor, *Tensor, *Tensor)"
	case "I":
		return "int64"
	case "F":
		return "float64"
	case "B":
		return "bool"
	}
	return ""
}

func goFunc(o op) string {
	var b strings.Builder
	args := o.args
	method := len(args) > 0 && args[0].name == "self" && args[0].typ == "T"
	var params []string
	start := 0
	if method {
		start = 1
	}
	for _, a := range args[start:] {
		params = append(params, goName(a.name)+" "+goType(a.typ))
	}
	doc := o.doc
	if doc == "" {
		doc = fmt.Sprintf("calls libtorch's %s.", strings.Fields(strings.SplitN(o.expr, "(", 2)[0])[0])
	}
	if strings.HasPrefix(doc, o.goName+" ") {
		fmt.Fprintf(&b, "// %s\n", doc)
	} else {
		fmt.Fprintf(&b, "// %s %s\n", o.goName, doc)
	}
	if method {
		fmt.Fprintf(&b, "func (t *Tensor) %s(%s) %s {\n", o.goName, strings.Join(params, ", "), goRet(o.ret))
	} else {
		fmt.Fprintf(&b, "func %s(%s) %s {\n", o.goName, strings.Join(params, ", "), goRet(o.ret))
	}
	var cargs []string
	var keep []string
	for _, a := range args {
		n := goName(a.name)
		switch a.typ {
		case "T":
			cargs = append(cargs, n+".ptr()")
			keep = append(keep, n)
		case "T?":
			cargs = append(cargs, "optPtr("+n+")")
			keep = append(keep, n)
		case "I":
			cargs = append(cargs, "C.int64_t("+n+")")
		case "F", "S":
			cargs = append(cargs, "C.double("+n+")")
		case "B":
			cargs = append(cargs, "cbool("+n+")")
		case "D":
			cargs = append(cargs, "C.int("+n+")")
		case "IL":
			fmt.Fprintf(&b, "\t%sP, %sN := intList(%s)\n", n, n, n)
			cargs = append(cargs, n+"P", n+"N")
		case "IL?":
			fmt.Fprintf(&b, "\t%sP, %sN := optIntList(%s)\n", n, n, n)
			cargs = append(cargs, n+"P", n+"N")
		case "TL":
			fmt.Fprintf(&b, "\t%sP, %sN := tensorList(%s)\n", n, n, n)
			cargs = append(cargs, n+"P", n+"N")
			keep = append(keep, n)
		case "G":
			cargs = append(cargs, n+".cptr()")
			keep = append(keep, n)
		}
	}
	switch o.ret {
	case "TL":
		b.WriteString("\tvar out *C.dp2o_tensor\n\tvar outN C.int\n")
		cargs = append(cargs, "&out", "&outN")
	case "T2":
		b.WriteString("\tvar out0, out1 C.dp2o_tensor\n")
		cargs = append(cargs, "&out0", "&out1")
	case "T3":
		b.WriteString("\tvar out0, out1, out2 C.dp2o_tensor\n")
		cargs = append(cargs, "&out0", "&out1", "&out2")
	case "I":
		b.WriteString("\tvar out C.int64_t\n")
		cargs = append(cargs, "&out")
	case "F":
		b.WriteString("\tvar out C.double\n")
		cargs = append(cargs, "&out")
	case "B":
		b.WriteString("\tvar out C.int\n")
		cargs = append(cargs, "&out")
	}
	if o.ret == "T" {
		fmt.Fprintf(&b, "\tres := C.dp2o_%s(%s)\n", o.cName, strings.Join(cargs, ", "))
	} else {
		fmt.Fprintf(&b, "\terr := C.dp2o_%s(%s)\n", o.cName, strings.Join(cargs, ", "))
	}
	for _, k := range keep {
		fmt.Fprintf(&b, "\truntime.KeepAlive(%s)\n", k)
	}
	if o.ret == "T" {
		fmt.Fprintf(&b, "\tmust(res.err, %q)\n", o.cName)
	} else {
		fmt.Fprintf(&b, "\tmust(err, %q)\n", o.cName)
	}
	switch o.ret {
	case "T":
		b.WriteString("\treturn newTensor(res.t)\n")
	case "TL":
		b.WriteString("\treturn takeList(out, outN)\n")
	case "T2":
		b.WriteString("\treturn newTensor(out0), newTensor(out1)\n")
	case "T3":
		b.WriteString("\treturn newTensor(out0), newTensor(out1), newTensor(out2)\n")
	case "I":
		b.WriteString("\treturn int64(out)\n")
	case "F":
		b.WriteString("\treturn float64(out)\n")
	case "B":
		b.WriteString("\treturn out != 0\n")
	}
	b.WriteString("}\n\n")
	return b.String()
}

func main() {
	root := "."
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	defs, err := filepath.Glob(filepath.Join(root, "ops", "*.def"))
	if err != nil || len(defs) == 0 {
		fmt.Fprintln(os.Stderr, "opgen: no op tables under", filepath.Join(root, "ops"))
		os.Exit(1)
	}
	sort.Strings(defs)
	var header bytes.Buffer
	header.WriteString("/* Code generated by torch/internal/opgen from the op tables in torch/ops; DO NOT EDIT. */\n#ifndef DP2O_OPS_H\n#define DP2O_OPS_H\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n")
	seen := map[string]string{}
	for _, d := range defs {
		ops, err := parse(d)
		if err != nil {
			fmt.Fprintln(os.Stderr, "opgen:", err)
			os.Exit(1)
		}
		base := strings.TrimSuffix(filepath.Base(d), ".def")
		var cpp, gosrc bytes.Buffer
		fmt.Fprintf(&cpp, "// Code generated by torch/internal/opgen from torch/ops/%s.def; DO NOT EDIT.\n#include \"shim.h\"\n\nextern \"C\" {\n\n", base)
		// The shim neither keeps the Go pointers it is given (shapes, out
		// parameters) past the call nor calls back into Go, which lets cgo
		// skip escaping them to the heap and its callback bookkeeping.
		var pre strings.Builder
		for _, o := range ops {
			fmt.Fprintf(&pre, "// #cgo noescape dp2o_%s\n// #cgo nocallback dp2o_%s\n", o.cName, o.cName)
		}
		fmt.Fprintf(&gosrc, "// Code generated by torch/internal/opgen from torch/ops/%s.def; DO NOT EDIT.\n\npackage torch\n\n%s// #include \"csrc/dp2o.h\"\nimport \"C\"\n\nimport \"runtime\"\n\nvar _ = runtime.KeepAlive\n\n", base, pre.String())
		fmt.Fprintf(&header, "/* %s.def */\n", base)
		for _, o := range ops {
			for _, a := range o.args {
				cParams(a)
			}
			if prev, ok := seen[o.cName]; ok {
				fmt.Fprintf(os.Stderr, "opgen: %s:%d: %s already declared in %s\n", o.file, o.line, o.cName, prev)
				os.Exit(1)
			}
			seen[o.cName] = fmt.Sprintf("%s:%d", o.file, o.line)
			fmt.Fprintf(&header, "%s;\n", cSig(o))
			cpp.WriteString(cBody(o))
			cpp.WriteString("\n")
			gosrc.WriteString(goFunc(o))
		}
		cpp.WriteString("}  // extern \"C\"\n")
		src, err := format.Source(gosrc.Bytes())
		if err != nil {
			fmt.Fprintln(os.Stderr, "opgen: gofmt:", err)
			os.Stderr.Write(gosrc.Bytes())
			os.Exit(1)
		}
		writeIfChanged(filepath.Join(root, "csrc", "gen_"+base+".cpp"), cpp.Bytes())
		writeIfChanged(filepath.Join(root, "ops_"+base+"_gen.go"), src)
	}
	header.WriteString("\n#ifdef __cplusplus\n}\n#endif\n#endif\n")
	writeIfChanged(filepath.Join(root, "csrc", "dp2o_ops.h"), header.Bytes())
}

// writeIfChanged keeps the file's mtime when the content is the same, so make
// does not recompile unchanged shim sources.
func writeIfChanged(path string, b []byte) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "opgen:", err)
		os.Exit(1)
	}
}
