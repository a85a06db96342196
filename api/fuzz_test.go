package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-messaging-system/messaging/persistence"
)

// The seed corpora live in testdata/fuzz/<target>; `go test` runs them as
// regular tests, and `go test -fuzz=FuzzX ./api/` explores from them.

func FuzzDecodeCursor(f *testing.F) {
	f.Add("")
	f.Add(testCodec.encode("alpha", persistence.Position{TxID: 10, ID: 3}))
	f.Fuzz(func(t *testing.T, cursor string) {
		pos, err := testCodec.decode("alpha", cursor)
		if err != nil {
			if !errors.Is(err, errInvalidCursor) {
				t.Fatalf("unexpected error type: %v", err)
			}
			return
		}
		if cursor == "" {
			if pos != (persistence.Position{}) {
				t.Fatalf("empty cursor decoded to %+v", pos)
			}
			return
		}
		// Only a cursor this codec made is accepted, and encoding is
		// canonical: there is exactly one string per position.
		if again := testCodec.encode("alpha", pos); again != cursor {
			t.Fatalf("accepted %q, which encodes back as %q", cursor, again)
		}
		if _, err := testCodec.decode("beta", cursor); err == nil {
			t.Fatalf("cursor %q is accepted for another tenant", cursor)
		}
	})
}

func FuzzDecodePublishBody(f *testing.F) {
	f.Add([]byte(`{"payload": {"a": 1}, "message_id": "x"}`))
	f.Add([]byte(`{"messages": [{"payload": 1}, {"payload": null, "message_id": "b"}]}`))
	const maxPayload, maxMessages = 512, 8
	f.Fuzz(func(t *testing.T, body []byte) {
		msgs, err := decodePublishBody(body, maxPayload, maxMessages)
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a requestError", err)
			}
			// The body size is checked before decoding, so every error
			// here is a 400.
			if re.status != http.StatusBadRequest {
				t.Fatalf("status %d for %v", re.status, err)
			}
			return
		}
		if len(msgs) < 1 || len(msgs) > maxMessages {
			t.Fatalf("accepted %d messages", len(msgs))
		}
		seen := map[string]bool{}
		for _, m := range msgs {
			if err := checkMessageID(m.MessageID); err != nil {
				t.Fatalf("accepted message id %q: %v", m.MessageID, err)
			}
			if seen[m.MessageID] {
				t.Fatalf("message id %q accepted twice", m.MessageID)
			}
			seen[m.MessageID] = true
			if !json.Valid(m.Body) || !utf8.Valid(m.Body) || len(m.Body) > maxPayload {
				t.Fatalf("accepted payload %q", m.Body)
			}
			if strings.Contains(strings.ReplaceAll(string(m.Body), `\\`, ""), `\u0000`) {
				t.Fatalf("accepted payload with NUL: %q", m.Body)
			}
		}
	})
}

// FuzzParseToken runs a verifier with the HS256 secret and an RS256 and an
// ES256 public key, seeded with a valid token of each algorithm.
func FuzzParseToken(f *testing.F) {
	keys := testSigningKeys()
	exp := time.Now().Add(24 * time.Hour).Unix()
	for _, seed := range []struct {
		method jwt.SigningMethod
		key    any
		kid    string
	}{{jwt.SigningMethodRS256, keys.rsa, "r"}, {jwt.SigningMethodES256, keys.ec, "e"}} {
		token := jwt.NewWithClaims(seed.method, jwt.MapClaims{"role": "admin", "exp": exp})
		token.Header["kid"] = seed.kid
		signed, err := token.SignedString(seed.key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(signed)
	}
	f.Add(adminToken(f))
	f.Add(tenantToken(f, "alpha"))
	f.Add("")
	verifier, err := newTokenVerifier(testSecret, []PublicKey{
		{ID: "r", Algorithm: AlgRS256, Key: &keys.rsa.PublicKey},
		{ID: "e", Algorithm: AlgES256, Key: &keys.ec.PublicKey},
	}, "", "")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, token string) {
		claims, err := verifier.parse(token)
		if err != nil {
			reason := describeTokenError(err)
			if reason == "" {
				t.Fatal("empty reason")
			}
			if len(token) > 8 && strings.Contains(reason, token) {
				t.Fatalf("reason %q repeats the token", reason)
			}
			return
		}
		if err := claims.Validate(); err != nil {
			t.Fatalf("accepted claims that fail Validate: %v", err)
		}
		if claims.ExpiresAt == nil {
			t.Fatal("accepted a token without exp")
		}
	})
}
