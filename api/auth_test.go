package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"hash"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/require"
)

// forgeToken builds a token by hand so that tests can set any header and
// claims. sign picks the HMAC hash; nil leaves the signature empty.
func forgeToken(t *testing.T, header, claims map[string]any, key []byte, sign func() hash.Hash) string {
	t.Helper()
	h, err := json.Marshal(header)
	require.NoError(t, err)
	c, err := json.Marshal(claims)
	require.NoError(t, err)
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	if sign == nil {
		return input + "."
	}
	mac := hmac.New(sign, key)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// parseHS256 verifies token as a server with only testSecret does.
func parseHS256(t *testing.T, token string) (*Claims, error) {
	t.Helper()
	v, err := newTokenVerifier(testSecret, nil, "", "")
	require.NoError(t, err)
	return v.parse(token)
}

func hs256(t *testing.T, claims map[string]any) string {
	t.Helper()
	return forgeToken(t, map[string]any{"alg": "HS256", "typ": "JWT"}, claims, testSecret, sha256.New)
}

func validClaims() map[string]any {
	return map[string]any{"role": "admin", "exp": time.Now().Add(time.Hour).Unix()}
}

func with(claims map[string]any, key string, value any) map[string]any {
	out := map[string]any{}
	for k, v := range claims {
		out[k] = v
	}
	if value == nil {
		delete(out, key)
	} else {
		out[key] = value
	}
	return out
}

// Every rejected token gets 401 with an invalid_token challenge. Tokens
// that are correctly signed but carry an unknown role, or a tenant role
// without a valid tenant_id, are rejected as invalid too: they name no
// principal, while 403 means a known principal lacks a right.
func TestParseTokenRejects(t *testing.T) {
	t.Parallel()
	now := time.Now()
	admin := adminToken(t)
	parts := strings.Split(admin, ".")
	editedPayload := parts[0] + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"role":"tenant","tenant_id":"alpha","exp":9999999999}`)) +
		"." + parts[2]
	rsaHeader := map[string]any{"alg": "RS256", "typ": "JWT"}

	cases := []struct {
		name  string
		token string
		want  string
	}{
		{"alg none", forgeToken(t, map[string]any{"alg": "none"}, validClaims(), nil, nil), "algorithm"},
		{"alg none uppercase", forgeToken(t, map[string]any{"alg": "NONE"}, validClaims(), nil, nil), "algorithm"},
		{"HS512 with the HS key", forgeToken(t, map[string]any{"alg": "HS512"}, validClaims(), testSecret, sha512.New), "algorithm"},
		{"RS256 header with the HS key", forgeToken(t, rsaHeader, validClaims(), testSecret, sha256.New), "algorithm"},
		{"no alg", forgeToken(t, map[string]any{"typ": "JWT"}, validClaims(), testSecret, sha256.New), "algorithm"},
		{"missing exp", hs256(t, with(validClaims(), "exp", nil)), "no exp"},
		{"null exp", hs256(t, with(validClaims(), "exp", json.RawMessage("null"))), "no exp"},
		{"string exp", hs256(t, with(validClaims(), "exp", "9999999999")), "malformed"},
		{"string nbf", hs256(t, with(validClaims(), "nbf", "1")), "malformed"},
		{"string exp in upper case", hs256(t, with(with(validClaims(), "exp", nil), "EXP", "9999999999")), "malformed"},
		{"object exp", hs256(t, with(validClaims(), "exp", map[string]any{"a": 1})), "malformed"},
		{"expired", hs256(t, with(validClaims(), "exp", now.Add(-time.Minute).Unix())), "expired"},
		{"not valid yet", hs256(t, with(validClaims(), "nbf", now.Add(time.Hour).Unix())), "not valid yet"},
		{"issued in the future", hs256(t, with(validClaims(), "iat", now.Add(time.Hour).Unix())), "future"},
		{"edited payload", editedPayload, "signature"},
		{"wrong secret", forgeToken(t, map[string]any{"alg": "HS256"}, validClaims(),
			[]byte("another-secret-another-secret-another"), sha256.New), "signature"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", "signature"},
		{"unknown role", hs256(t, with(validClaims(), "role", "root")), "role"},
		{"no role", hs256(t, with(validClaims(), "role", nil)), "role"},
		{"role not a string", hs256(t, with(validClaims(), "role", 1)), "malformed"},
		{"tenant without tenant_id", hs256(t, with(validClaims(), "role", "tenant")), "tenant_id"},
		{"tenant with invalid tenant_id", hs256(t, with(with(validClaims(), "role", "tenant"), "tenant_id", "../Alpha")), "tenant_id"},
		{"admin with tenant_id", hs256(t, with(validClaims(), "tenant_id", "alpha")), "tenant_id"},
		{"two segments", parts[0] + "." + parts[1], "malformed"},
		{"four segments", admin + ".x", "malformed"},
		{"padded base64", parts[0] + "=." + parts[1] + "." + parts[2], "malformed"},
		{"too long", admin + strings.Repeat("A", maxTokenBytes), "malformed"},
		{"garbage", "not-a-token", "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseHS256(t, tc.token)
			require.Error(t, err)
			require.Contains(t, describeTokenError(err), tc.want)

			env := setup(t)
			rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: tc.token})
			requireProblem(t, rec, http.StatusUnauthorized, "invalid")
			challenge := rec.Header().Get("WWW-Authenticate")
			require.True(t, strings.HasPrefix(challenge, `Bearer realm="messaging", error="invalid`), challenge)
			require.NotContains(t, rec.Body.String(), tc.token[:min(len(tc.token), 40)])
		})
	}
}

func TestParseTokenAccepts(t *testing.T) {
	t.Parallel()
	now := time.Now()
	cases := []struct {
		name   string
		token  string
		role   string
		tenant string
	}{
		{"signed admin", adminToken(t), RoleAdmin, ""},
		{"signed tenant", tenantToken(t, "alpha"), RoleTenant, "alpha"},
		{"expired within leeway", hs256(t, with(validClaims(), "exp", now.Add(-10*time.Second).Unix())), RoleAdmin, ""},
		{"nbf within leeway", hs256(t, with(validClaims(), "nbf", now.Add(10*time.Second).Unix())), RoleAdmin, ""},
		{"fractional exp", hs256(t, with(validClaims(), "exp", float64(now.Add(time.Hour).Unix())+0.5)), RoleAdmin, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			claims, err := parseHS256(t, tc.token)
			require.NoError(t, err)
			require.Equal(t, tc.role, claims.Role)
			require.Equal(t, tc.tenant, claims.TenantID)
		})
	}
}

func TestBearerHeaderRejects(t *testing.T) {
	t.Parallel()
	token := adminToken(t)
	cases := []struct {
		name      string
		header    []string
		challenge string
	}{
		{"no header", nil, `Bearer realm="messaging"`},
		{"basic scheme", []string{"Basic YWRtaW46YWRtaW4="}, `Bearer realm="messaging"`},
		{"token without scheme", []string{token}, `Bearer realm="messaging"`},
		{"scheme without token", []string{"Bearer"}, `error="invalid_request"`},
		{"scheme with blank token", []string{"Bearer   "}, `error="invalid_request"`},
		{"token with spaces", []string{"Bearer abc def"}, `error="invalid_request"`},
		{"token with quotes", []string{`Bearer "abc"`}, `error="invalid_request"`},
		{"two headers", []string{"Bearer " + token, "Bearer " + token}, `error="invalid_request"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setup(t)
			r, _ := http.NewRequest(http.MethodGet, "/api/v1/tenants", nil)
			for _, v := range tc.header {
				r.Header.Add("Authorization", v)
			}
			rec := newRecorder(env, r)
			requireProblem(t, rec, http.StatusUnauthorized, "")
			require.Contains(t, rec.Header().Get("WWW-Authenticate"), tc.challenge)
		})
	}
}

func TestBearerSchemeIsCaseInsensitive(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", auth: "bearer " + adminToken(t)})
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
}

func TestSignTokenRoundTrip(t *testing.T) {
	t.Parallel()
	before := time.Now().Add(-time.Second)
	token, err := SignToken(testSecret, Claims{Role: RoleTenant, TenantID: "alpha"}, 5*time.Minute)
	require.NoError(t, err)

	claims, err := parseHS256(t, token)
	require.NoError(t, err)
	require.Equal(t, RoleTenant, claims.Role)
	require.Equal(t, "alpha", claims.TenantID)
	require.WithinDuration(t, before.Add(5*time.Minute), claims.ExpiresAt.Time, 3*time.Second)
	require.False(t, claims.IssuedAt.Before(before.Truncate(time.Second)))

	parsed, _, err := jwt.NewParser().ParseUnverified(token, &Claims{})
	require.NoError(t, err)
	require.Equal(t, "HS256", parsed.Header["alg"])
}

func TestSignTokenRejects(t *testing.T) {
	t.Parallel()
	_, err := SignToken([]byte("short"), Claims{Role: RoleAdmin}, time.Hour)
	require.ErrorContains(t, err, "at least 32")

	_, err = SignToken(testSecret, Claims{Role: RoleAdmin}, 0)
	require.ErrorContains(t, err, "ttl")

	_, err = SignToken(testSecret, Claims{Role: "root"}, time.Hour)
	require.ErrorContains(t, err, "role")

	_, err = SignToken(testSecret, Claims{Role: RoleTenant}, time.Hour)
	require.ErrorContains(t, err, "tenant_id")
}

func TestChallengeTextDropsUnsafeCharacters(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a 'b' c", challengeText("a \"b\" c\\\n\x00é"))
}
