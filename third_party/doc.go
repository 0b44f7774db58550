// Package thirdparty records the files this project ships that come from
// other projects (tokenizer vocabularies and models, tag lists, …), each
// with its origin and licence, in manifest.json beside the licence texts
// under licenses/. It holds no code; its test checks that the manifest
// covers every such file in the repository. README.md lists them, and the
// projects whose code the packages port.
package thirdparty
