package t5

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type).
const (
	PieceNormal      = 1
	PieceUnknown     = 2
	PieceControl     = 3
	PieceUserDefined = 4
	PieceUnused      = 5
	PieceByte        = 6
)

// SentencePiece model types (TrainerSpec.ModelType).
const (
	ModelUnigram = 1
	ModelBPE     = 2
	ModelWord    = 3
	ModelChar    = 4
)

// ModelProto is the part of a serialised SentencePiece ModelProto (a
// tokenizer.model / spiece.model file) that encoders need, with the
// proto's defaults for absent fields. Other tokenizers of the module (the
// LLaMA BPE tokenizer of reward/qalign) read their model files through it.
type ModelProto struct {
	Pieces []string
	Scores []float32
	Types  []int
	// TrainerSpec
	ModelType    int
	ByteFallback bool
	UnkID        int64
	BOSID        int64
	EOSID        int64
	PadID        int64
	// NormalizerSpec
	NormalizerName          string
	PrecompiledCharsmap     []byte
	AddDummyPrefix          bool
	RemoveExtraWhitespaces  bool
	EscapeWhitespaces       bool
	TreatWhitespaceAsSuffix bool
}

// ParseModelProto decodes a serialised SentencePiece ModelProto. Absent
// fields take the proto's defaults (Unigram, unk 0, bos 1, eos 2, pad −1,
// add_dummy_prefix, remove_extra_whitespaces and escape_whitespaces true).
// Bytes that are not a protobuf message give an error.
func ParseModelProto(b []byte) (*ModelProto, error) {
	m := &ModelProto{ModelType: ModelUnigram, UnkID: 0, BOSID: 1, EOSID: 2, PadID: -1,
		AddDummyPrefix: true, RemoveExtraWhitespaces: true, EscapeWhitespaces: true}
	err := walkProto(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType: // pieces
			piece, score, ptype := "", float32(0), PieceNormal
			err := walkProto(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					piece = string(v)
				case num == 2 && typ == protowire.Fixed32Type:
					score = math.Float32frombits(uint32(x))
				case num == 3 && typ == protowire.VarintType:
					ptype = int(x)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("piece %d: %w", len(m.Pieces), err)
			}
			m.Pieces = append(m.Pieces, piece)
			m.Scores = append(m.Scores, score)
			m.Types = append(m.Types, ptype)
		case num == 2 && typ == protowire.BytesType: // trainer_spec
			return walkProto(v, func(num protowire.Number, typ protowire.Type, _ []byte, x uint64) error {
				if typ != protowire.VarintType {
					return nil
				}
				switch num {
				case 3:
					m.ModelType = int(x)
				case 24:
					m.TreatWhitespaceAsSuffix = x != 0
				case 35:
					m.ByteFallback = x != 0
				case 40:
					m.UnkID = int64(int32(x))
				case 41:
					m.BOSID = int64(int32(x))
				case 42:
					m.EOSID = int64(int32(x))
				case 43:
					m.PadID = int64(int32(x))
				}
				return nil
			})
		case num == 3 && typ == protowire.BytesType: // normalizer_spec
			return walkProto(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					m.NormalizerName = string(v)
				case num == 2 && typ == protowire.BytesType:
					m.PrecompiledCharsmap = append([]byte(nil), v...)
				case num == 3 && typ == protowire.VarintType:
					m.AddDummyPrefix = x != 0
				case num == 4 && typ == protowire.VarintType:
					m.RemoveExtraWhitespaces = x != 0
				case num == 5 && typ == protowire.VarintType:
					m.EscapeWhitespaces = x != 0
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("not a SentencePiece model: %w", err)
	}
	return m, nil
}
