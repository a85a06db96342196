package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Bounds of PostgreSQL's numeric type, which jsonb uses for numbers
// (PostgreSQL 15 manual, "Numeric Types"): 131072 digits before the decimal
// point and 16383 after. Larger numbers fail with "value overflows numeric
// format".
const (
	maxNumericIntegerDigits  = 131072
	maxNumericFractionDigits = 16383
)

// preparePayload compacts raw, one JSON value, and checks that PostgreSQL
// jsonb accepts it and that its stored text is at most maxBytes long. The
// stored text matters because jsonb writes numbers in positional notation:
// the 8 bytes "1e100000" come back as 100001 digits.
func preparePayload(raw json.RawMessage, maxBytes int) ([]byte, error) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, fmt.Errorf("payload is not valid JSON: %w", err)
	}
	payload := buf.Bytes()
	if !utf8.Valid(payload) {
		return nil, errors.New("payload must be valid UTF-8")
	}

	size, err := storedSize(payload)
	if err != nil {
		return nil, err
	}
	if size > maxBytes {
		return nil, badRequest("payload is %d bytes as stored, the maximum is %d", size, maxBytes)
	}
	return payload, nil
}

// storedSize returns the length of the compact JSON b once every number is
// in positional notation. It rejects what jsonb rejects: the escape \u0000,
// unpaired UTF-16 surrogate escapes and numbers outside numeric's range.
func storedSize(b []byte) (int, error) {
	size := len(b)
	for i := 0; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			end, err := scanString(b, i+1)
			if err != nil {
				return 0, err
			}
			i = end
		case c == '-' || isDigit(c):
			end := i + 1
			for end < len(b) && isNumberByte(b[end]) {
				end++
			}
			n, err := positionalLength(b[i:end])
			if err != nil {
				return 0, err
			}
			size += n - (end - i)
			i = end
		default:
			i++
		}
	}
	return size, nil
}

// scanString checks the escapes of the JSON string that starts at b[i],
// just after its opening quote, and returns the index after its closing
// quote.
func scanString(b []byte, i int) (int, error) {
	for i < len(b) {
		switch b[i] {
		case '"':
			return i + 1, nil
		case '\\':
			n, err := checkEscape(b, i)
			if err != nil {
				return 0, err
			}
			i += n
		default:
			i++
		}
	}
	return 0, errors.New("payload has an unterminated string")
}

// checkEscape checks the escape sequence at b[i] and returns its length.
func checkEscape(b []byte, i int) (int, error) {
	if i+1 < len(b) && b[i+1] != 'u' {
		return 2, nil
	}
	r, ok := hex4(b, i+2)
	switch {
	case !ok:
		return 0, errors.New("payload has an invalid \\u escape")
	case r == 0:
		return 0, errors.New(`payload contains \u0000, which PostgreSQL jsonb cannot store`)
	case r >= 0xDC00 && r <= 0xDFFF:
		return 0, errors.New("payload has a UTF-16 low surrogate escape without a high surrogate")
	case r >= 0xD800 && r <= 0xDBFF:
		low, ok := rune(0), false
		if i+7 < len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
			low, ok = hex4(b, i+8)
		}
		if !ok || low < 0xDC00 || low > 0xDFFF {
			return 0, errors.New("payload has a UTF-16 high surrogate escape without a low surrogate")
		}
		return 12, nil
	default:
		return 6, nil
	}
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[i:i+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	return rune(v), true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isNumberByte(c byte) bool {
	return isDigit(c) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}

// maxExponentDigits bounds the exponent that positionalLength parses; any
// longer exponent is far outside numeric's range.
const maxExponentDigits = 7

// positionalLength returns the length of the JSON number num written the way
// PostgreSQL's numeric prints it: positional, with as many fraction digits
// as the input had after the exponent moved the decimal point.
func positionalLength(num []byte) (int, error) {
	sign := 0
	if num[0] == '-' {
		sign = 1
	}
	n := splitNumber(num[sign:])
	if n.exponent == nil {
		return len(num), checkNumericRange(num, n.intLen, n.fracLen)
	}

	exp, err := parseExponent(n.exponent)
	if err != nil {
		return 0, fmt.Errorf("number %s: %w", truncate(string(num), maxNameInError), err)
	}
	point := n.intLen + exp
	leading := len(n.digits) - len(bytes.TrimLeft(n.digits, "0"))
	intDigits := max(point-leading, 0)
	if leading == len(n.digits) {
		intDigits = 0 // zero prints as "0" whatever its exponent
	}
	scale := max(n.fracLen-exp, 0)
	if err := checkNumericRange(num, intDigits, scale); err != nil {
		return 0, err
	}

	length := sign + max(intDigits, 1)
	if scale > 0 {
		length += 1 + scale
	}
	return length, nil
}

// numberParts are the parts of an unsigned JSON number.
type numberParts struct {
	digits   []byte // integer and fraction digits, without the point
	intLen   int    // how many of digits precede the point
	fracLen  int
	exponent []byte // after the e or E, with its sign; nil without one
}

func splitNumber(s []byte) numberParts {
	var n numberParts
	for n.intLen < len(s) && isDigit(s[n.intLen]) {
		n.intLen++
	}
	n.digits = append(n.digits, s[:n.intLen]...)
	rest := s[n.intLen:]

	if len(rest) > 0 && rest[0] == '.' {
		end := 1
		for end < len(rest) && isDigit(rest[end]) {
			end++
		}
		n.digits = append(n.digits, rest[1:end]...)
		n.fracLen = end - 1
		rest = rest[end:]
	}
	if len(rest) > 0 {
		n.exponent = rest[1:]
	}
	return n
}

func parseExponent(s []byte) (int, error) {
	neg := false
	if len(s) > 0 && (s[0] == '+' || s[0] == '-') {
		neg, s = s[0] == '-', s[1:]
	}
	// JSON allows leading zeros in exponents: 1e007 is 1e7.
	for len(s) > 1 && s[0] == '0' {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > maxExponentDigits {
		return 0, errors.New("exponent is outside the range PostgreSQL numeric accepts")
	}
	exp, err := strconv.Atoi(string(s))
	if err != nil {
		return 0, fmt.Errorf("invalid exponent: %w", err)
	}
	if neg {
		exp = -exp
	}
	return exp, nil
}

func checkNumericRange(num []byte, intDigits, scale int) error {
	if intDigits > maxNumericIntegerDigits || scale > maxNumericFractionDigits {
		return fmt.Errorf("number %s is outside the range PostgreSQL numeric accepts (%d digits before the point, %d after)",
			truncate(string(num), maxNameInError), maxNumericIntegerDigits, maxNumericFractionDigits)
	}
	return nil
}
