package t5

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"google.golang.org/protobuf/encoding/protowire"
)

// Piece and model types, as the tokenizer names them (ModelProto's).
const (
	pieceNormal      = PieceNormal
	pieceUnknown     = PieceUnknown
	pieceControl     = PieceControl
	pieceUserDefined = PieceUserDefined
	modelTypeUnigram = ModelUnigram
)

// spieceModel is the part of a SentencePiece ModelProto the tokenizer uses.
type spieceModel struct {
	pieces       []string
	scores       []float64
	types        []int
	modelType    int
	unkID        int64
	eosID        int64
	padID        int64
	byteFallback bool
	charsmap     []byte
	normName     string
}

// parseSpiece decodes a serialised ModelProto (ParseModelProto, with its
// defaults) into the tokenizer's view of it.
func parseSpiece(b []byte) (*spieceModel, error) {
	p, err := ParseModelProto(b)
	if err != nil {
		return nil, err
	}
	m := &spieceModel{pieces: p.Pieces, types: p.Types, modelType: p.ModelType, unkID: p.UnkID,
		eosID: p.EOSID, padID: p.PadID, byteFallback: p.ByteFallback, charsmap: p.PrecompiledCharsmap,
		normName: p.NormalizerName}
	m.scores = make([]float64, len(p.Scores))
	for i, v := range p.Scores {
		m.scores[i] = float64(v)
	}
	return m, nil
}

// walkProto calls f for every field of a serialised message: the bytes of
// length-delimited fields, the value of the others.
func walkProto(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var y uint32
			y, n = protowire.ConsumeFixed32(b)
			x = uint64(y)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// tokenizerConfig is the part of tokenizer_config.json that transformers'
// T5 conversion reads.
type tokenizerConfig struct {
	ExtraIDs       *int  `json:"extra_ids"`
	AddPrefixSpace *bool `json:"add_prefix_space"`
	Legacy         *bool `json:"legacy"`
}

// loadSpiece builds the fast tokenizer from spiece.model the way
// transformers' T5Converter does: the pieces and their scores, then
// extra_ids pieces <extra_id_{N−1}> … <extra_id_0> with score 0; the
// precompiled charsmap, a right strip and the collapsing of space runs;
// Metaspace with the prepend scheme of add_prefix_space and legacy; the
// "$A </s>" template. The unknown, control and user-defined pieces and the
// extra ids are added tokens. cfgPath (tokenizer_config.json) is optional.
func loadSpiece(path, cfgPath string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sp, err := parseSpiece(data)
	if err != nil {
		return nil, err
	}
	if sp.modelType != modelTypeUnigram {
		return nil, fmt.Errorf("SentencePiece model type %d is not supported (want Unigram)", sp.modelType)
	}
	if len(sp.pieces) == 0 {
		return nil, errors.New("SentencePiece model has no pieces")
	}
	extra, addPrefix, legacy := 100, true, true
	if cdata, err := os.ReadFile(cfgPath); err == nil {
		var c tokenizerConfig
		if err := json.Unmarshal(cdata, &c); err != nil {
			return nil, fmt.Errorf("%s: %w", cfgPath, err)
		}
		if c.ExtraIDs != nil {
			extra = *c.ExtraIDs
		}
		if c.AddPrefixSpace != nil {
			addPrefix = *c.AddPrefixSpace
		}
		if c.Legacy != nil {
			legacy = *c.Legacy
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if extra < 0 {
		return nil, fmt.Errorf("extra_ids %d", extra)
	}
	pieces, scores := append([]string(nil), sp.pieces...), append([]float64(nil), sp.scores...)
	var added []addedToken
	for i, p := range sp.pieces {
		switch sp.types[i] {
		case pieceUnknown, pieceControl, pieceUserDefined:
			added = append(added, addedToken{content: p, id: int64(i)})
		}
	}
	for i := extra - 1; i >= 0; i-- {
		p := fmt.Sprintf("<extra_id_%d>", i)
		added = append(added, addedToken{content: p, id: int64(len(pieces))})
		pieces = append(pieces, p)
		scores = append(scores, 0)
	}
	model, err := newUnigram(pieces, scores, sp.unkID, sp.byteFallback)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{model: model, added: added, stripRight: true, collapseSpace: true, split: true, prepend: prependNever}
	if len(sp.charsmap) > 0 {
		if t.norm, err = parseCharsmap(sp.charsmap); err != nil {
			return nil, err
		}
	}
	if addPrefix {
		t.prepend = prependAlways
		if !legacy {
			t.prepend = prependFirst
		}
	}
	if sp.eosID < 0 || sp.eosID >= int64(len(sp.pieces)) {
		return nil, fmt.Errorf("eos_id %d outside the model's pieces", sp.eosID)
	}
	t.suffix = []int64{sp.eosID}
	pad := "<pad>"
	if sp.padID >= 0 && sp.padID < int64(len(sp.pieces)) {
		pad = sp.pieces[sp.padID]
	}
	if err := t.finish(pad, sp.pieces[sp.eosID]); err != nil {
		return nil, err
	}
	return t, nil
}
