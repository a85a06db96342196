package api

import (
	"encoding/base64"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/persistence"
)

var testCodec = cursorCodec{key: deriveKey(testSecret, "messaging cursor key v1")}

func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	positions := []persistence.Position{
		{},
		{TxID: 1, ID: 1},
		{TxID: 123456789, ID: 42},
		{TxID: math.MaxUint64, ID: math.MaxInt64},
	}
	for _, pos := range positions {
		cursor := testCodec.encode("alpha", pos)
		require.LessOrEqual(t, len(cursor), maxCursorEncoded)
		got, err := testCodec.decode("alpha", cursor)
		require.NoError(t, err)
		require.Equal(t, pos, got)
	}
}

func TestCursorEmptyIsStart(t *testing.T) {
	t.Parallel()
	pos, err := testCodec.decode("alpha", "")
	require.NoError(t, err)
	require.Equal(t, persistence.Position{}, pos)
}

func TestCursorIsBoundToTenantAndKey(t *testing.T) {
	t.Parallel()
	pos := persistence.Position{TxID: 77, ID: 5}
	cursor := testCodec.encode("alpha", pos)

	_, err := testCodec.decode("beta", cursor)
	require.ErrorIs(t, err, errInvalidCursor)
	_, err = testCodec.decode("alph", cursor)
	require.ErrorIs(t, err, errInvalidCursor)

	other := cursorCodec{key: []byte("another key")}
	_, err = other.decode("alpha", cursor)
	require.ErrorIs(t, err, errInvalidCursor)
}

func TestCursorDoesNotRevealTenant(t *testing.T) {
	t.Parallel()
	raw, err := base64.RawURLEncoding.DecodeString(testCodec.encode("alpha", persistence.Position{TxID: 1, ID: 2}))
	require.NoError(t, err)
	require.NotContains(t, string(raw), "alpha")
}

// Every single-bit change anywhere in the cursor makes it invalid.
func TestCursorRejectsEveryBitFlip(t *testing.T) {
	t.Parallel()
	cursor := testCodec.encode("alpha", persistence.Position{TxID: 9, ID: 3})
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	require.NoError(t, err)

	for i := range raw {
		for bit := range 8 {
			edited := append([]byte(nil), raw...)
			edited[i] ^= 1 << bit
			_, err := testCodec.decode("alpha", base64.RawURLEncoding.EncodeToString(edited))
			require.ErrorIs(t, err, errInvalidCursor, "byte %d bit %d", i, bit)
		}
	}
}

func TestCursorRejectsMalformed(t *testing.T) {
	t.Parallel()
	valid := testCodec.encode("alpha", persistence.Position{TxID: 9, ID: 3})
	raw, _ := base64.RawURLEncoding.DecodeString(valid)
	wrongVersion := append([]byte{2}, raw[1:]...)

	cases := map[string]string{
		"truncated by one":   valid[:len(valid)-1],
		"only the body":      base64.RawURLEncoding.EncodeToString(raw[:cursorBodyBytes]),
		"one byte more":      base64.RawURLEncoding.EncodeToString(append(raw, 0)),
		"padding":            base64.URLEncoding.EncodeToString(raw[:32]),
		"standard alphabet":  base64.StdEncoding.EncodeToString(raw),
		"wrong version":      base64.RawURLEncoding.EncodeToString(wrongVersion),
		"whitespace":         valid[:10] + " " + valid[10:],
		"newline":            valid + "\n",
		"too long":           valid + valid,
		"non-ASCII":          "é" + valid,
		"single char":        "A",
		"non-canonical bits": valid[:len(valid)-2] + "A",
	}
	for name, cursor := range cases {
		_, err := testCodec.decode("alpha", cursor)
		require.ErrorIs(t, err, errInvalidCursor, name)
	}
}
