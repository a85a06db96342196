package api

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPositionalLengthMatchesPostgres(t *testing.T) {
	t.Parallel()
	// Lengths of '<number>'::jsonb::text on PostgreSQL 15.
	cases := map[string]int{
		"0":            1,
		"-12":          3,
		"1.50":         4,
		"1E+2":         3,
		"123.456e-2":   7,
		"0.0e-5":       8,
		"0e5":          1,
		"1e131071":     131072,
		"1e-16383":     16385,
		"1.5e-16382":   16385,
		"0.000123e2":   6,
		"-2.5e3":       5,
		"1e0000000003": 4,
	}
	for num, want := range cases {
		got, err := positionalLength([]byte(num))
		require.NoError(t, err, num)
		require.Equal(t, want, got, num)
	}
}

func TestPositionalLengthRejectsOutOfRange(t *testing.T) {
	t.Parallel()
	for _, num := range []string{"1e131072", "1e-16384", "1e99999999", "-1e+99999999999", "0.1e-16383"} {
		_, err := positionalLength([]byte(num))
		require.Error(t, err, num)
	}
}

func TestPreparePayload(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		raw     string
		max     int
		want    string
		wantErr string
	}{
		{"compacts", "{ \"a\" : [ 1 , 2 ] }", 100, `{"a":[1,2]}`, ""},
		{"keeps escapes", `"\u00e9\n\\u0000"`, 100, `"\u00e9\n\\u0000"`, ""},
		{"surrogate pair", `"\ud83d\ude00"`, 100, `"\ud83d\ude00"`, ""},
		{"uppercase hex", `"\uD83D\uDE00"`, 100, `"\uD83D\uDE00"`, ""},
		{"digits in strings are not numbers", `"1e999999"`, 100, `"1e999999"`, ""},
		{"at limit", `"` + strings.Repeat("x", 8) + `"`, 10, `"xxxxxxxx"`, ""},
		{"over limit", `"` + strings.Repeat("x", 9) + `"`, 10, "", "11 bytes as stored"},
		{"expanded over limit", `[1e20]`, 10, "", "23 bytes as stored"},
		{"NUL", `"\u0000"`, 100, "", `\u0000`},
		{"NUL in key", `{"a\u0000": 1}`, 100, "", `\u0000`},
		{"high surrogate at end", `"\ud800"`, 100, "", "high surrogate"},
		{"high surrogate then text", `"\ud800abcdef"`, 100, "", "high surrogate"},
		{"two high surrogates", `"\ud800\ud800"`, 100, "", "high surrogate"},
		{"low surrogate", `"\udfff"`, 100, "", "low surrogate"},
		{"invalid UTF-8", "\"\xc3\x28\"", 100, "", "UTF-8"},
		{"number out of range", `{"n": [1e131072]}`, 1 << 20, "", "outside the range"},
	}
	for _, tc := range cases {
		got, err := preparePayload(json.RawMessage(tc.raw), tc.max)
		if tc.wantErr != "" {
			require.ErrorContains(t, err, tc.wantErr, tc.name)
			continue
		}
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.want, string(got), tc.name)
	}
}
