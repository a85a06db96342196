package api

import (
	"crypto/sha256"
	"encoding/base64"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

const (
	rsaKid = "rsa-1"
	ecKid  = "ec-1"
)

var testCursorKey = []byte("cursor-key-cursor-key-cursor-key-0123")

// publicKeys returns the key set of the public-key tests: testSigningKeys'
// rsa under rsaKid and ec under ecKid.
func publicKeys(t *testing.T) []PublicKey {
	t.Helper()
	k := testSigningKeys()
	data := pemBlock(t, &k.rsa.PublicKey, map[string]string{"kid": rsaKid}) +
		pemBlock(t, &k.ec.PublicKey, map[string]string{"kid": ecKid})
	keys, _, err := ParsePublicKeys([]byte(data))
	require.NoError(t, err)
	return keys
}

// withPublicKeys configures the public keys, and no HS256 secret unless
// keepSecret is set.
func withPublicKeys(t *testing.T, keepSecret bool) setupOption {
	keys := publicKeys(t)
	return withConfig(func(c *Config) {
		c.PublicKeys = keys
		c.CursorKey = testCursorKey
		if !keepSecret {
			c.JWTSecret = nil
		}
	})
}

// signWith signs claims with method and key, setting the kid header when
// kid is not empty.
func signWith(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	token := jwt.NewWithClaims(method, claims)
	if kid != "" {
		token.Header["kid"] = kid
	}
	signed, err := token.SignedString(key)
	require.NoError(t, err)
	return signed
}

func adminClaims() jwt.MapClaims {
	return jwt.MapClaims{"role": "admin", "exp": time.Now().Add(time.Hour).Unix()}
}

func claimsWith(key string, value any) jwt.MapClaims {
	c := adminClaims()
	if value == nil {
		delete(c, key)
	} else {
		c[key] = value
	}
	return c
}

// getTenants returns the response to GET /api/v1/tenants with token.
func getTenants(t *testing.T, env *testEnv, token string) int {
	t.Helper()
	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: token})
	if rec.Code == http.StatusUnauthorized {
		requireProblem(t, rec, http.StatusUnauthorized, "invalid")
		require.Contains(t, rec.Header().Get("WWW-Authenticate"), `error="invalid_token"`)
	}
	return rec.Code
}

func TestPublicKeyTokensAccepted(t *testing.T) {
	t.Parallel()
	k := testSigningKeys()
	for _, keepSecret := range []bool{false, true} {
		env := setup(t, withPublicKeys(t, keepSecret))
		require.Equal(t, http.StatusOK, getTenants(t, env, signWith(t, jwt.SigningMethodRS256, k.rsa, rsaKid, adminClaims())))
		require.Equal(t, http.StatusOK, getTenants(t, env, signWith(t, jwt.SigningMethodES256, k.ec, ecKid, adminClaims())))

		tenant := signWith(t, jwt.SigningMethodES256, k.ec, ecKid,
			jwt.MapClaims{"role": "tenant", "tenant_id": "alpha", "exp": time.Now().Add(time.Hour).Unix()})
		rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants/alpha", token: tenant})
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		rec = env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants/beta", token: tenant})
		requireProblem(t, rec, http.StatusNotFound, "tenant not found")
	}
}

func TestHS256StillWorksWithPublicKeys(t *testing.T) {
	t.Parallel()
	env := setup(t, withPublicKeys(t, true))
	require.Equal(t, http.StatusOK, getTenants(t, env, adminToken(t)))
}

// Every token here is rejected with 401, both by a server with only public
// keys and by one with public keys and an HS256 secret.
func TestPublicKeyTokensRejected(t *testing.T) {
	t.Parallel()
	k := testSigningKeys()
	rsaPEM := []byte(pemBlock(t, &k.rsa.PublicKey, map[string]string{"kid": rsaKid}))
	valid := signWith(t, jwt.SigningMethodRS256, k.rsa, rsaKid, adminClaims())
	parts := strings.Split(valid, ".")
	edited := parts[0] + "." + base64.RawURLEncoding.EncodeToString(
		[]byte(`{"role":"tenant","tenant_id":"alpha","exp":9999999999}`)) + "." + parts[2]

	cases := []struct {
		name  string
		token string
		want  string
	}{
		{"alg none", forgeToken(t, map[string]any{"alg": "none", "kid": rsaKid}, validClaims(), nil, nil), "algorithm"},
		{"HS256 with the RSA public key PEM as secret", forgeToken(t, map[string]any{"alg": "HS256", "kid": rsaKid},
			validClaims(), rsaPEM, sha256.New), "signature"},
		{"HS256 with the RSA public key modulus as secret", forgeToken(t, map[string]any{"alg": "HS256", "kid": rsaKid},
			validClaims(), k.rsa.N.Bytes(), sha256.New), "signature"},
		{"RS256 signed by another key under a known kid", signWith(t, jwt.SigningMethodRS256, k.rsaOther, rsaKid, adminClaims()), "signature"},
		{"ES256 signed by another key under a known kid", signWith(t, jwt.SigningMethodES256, k.ecOther, ecKid, adminClaims()), "signature"},
		{"RS256 under the EC key's kid", signWith(t, jwt.SigningMethodRS256, k.rsa, ecKid, adminClaims()), "another algorithm"},
		{"ES256 under the RSA key's kid", signWith(t, jwt.SigningMethodES256, k.ec, rsaKid, adminClaims()), "another algorithm"},
		{"unknown kid", signWith(t, jwt.SigningMethodRS256, k.rsa, "rsa-2", adminClaims()), "names no configured key"},
		{"no kid", signWith(t, jwt.SigningMethodRS256, k.rsa, "", adminClaims()), "needs a kid"},
		{"kid not a string", forgeToken(t, map[string]any{"alg": "RS256", "kid": 1}, validClaims(), nil, nil), "needs a kid"},
		{"PS256 with the RSA key", signWith(t, jwt.SigningMethodPS256, k.rsa, rsaKid, adminClaims()), "algorithm"},
		{"RS512 with the RSA key", signWith(t, jwt.SigningMethodRS512, k.rsa, rsaKid, adminClaims()), "algorithm"},
		{"ES384 header", forgeToken(t, map[string]any{"alg": "ES384", "kid": ecKid}, validClaims(), nil, nil), "algorithm"},
		{"expired", signWith(t, jwt.SigningMethodRS256, k.rsa, rsaKid, claimsWith("exp", time.Now().Add(-time.Minute).Unix())), "expired"},
		{"missing exp", signWith(t, jwt.SigningMethodES256, k.ec, ecKid, claimsWith("exp", nil)), "no exp"},
		{"not valid yet", signWith(t, jwt.SigningMethodES256, k.ec, ecKid, claimsWith("nbf", time.Now().Add(time.Hour).Unix())), "not valid yet"},
		{"edited payload", edited, "signature"},
		{"signature of another token", parts[0] + "." + parts[1] + "." +
			strings.Split(signWith(t, jwt.SigningMethodRS256, k.rsa, rsaKid, claimsWith("x", 1)), ".")[2], "signature"},
		{"unknown role", signWith(t, jwt.SigningMethodES256, k.ec, ecKid, claimsWith("role", "root")), "role"},
	}
	for _, keepSecret := range []bool{false, true} {
		env := setup(t, withPublicKeys(t, keepSecret))
		for _, tc := range cases {
			rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: tc.token})
			requireProblem(t, rec, http.StatusUnauthorized, tc.want)
			require.Contains(t, rec.Header().Get("WWW-Authenticate"), `error="invalid_token"`, tc.name)
		}
	}
}

// A server without an HS256 secret rejects every HS256 token, whatever key
// signed it.
func TestHS256RejectedWithoutSecret(t *testing.T) {
	t.Parallel()
	env := setup(t, withPublicKeys(t, false))
	for _, key := range [][]byte{testSecret, testCursorKey, nil, []byte("")} {
		token := forgeToken(t, map[string]any{"alg": "HS256"}, validClaims(), key, sha256.New)
		rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: token})
		requireProblem(t, rec, http.StatusUnauthorized, "algorithm")
	}
}

func TestIssuerAndAudienceChecked(t *testing.T) {
	t.Parallel()
	k := testSigningKeys()
	env := setup(t, withPublicKeys(t, true), withConfig(func(c *Config) {
		c.Issuer = "https://issuer.example"
		c.Audience = "messaging"
	}))
	good := func() jwt.MapClaims {
		c := adminClaims()
		c["iss"] = "https://issuer.example"
		c["aud"] = []string{"other", "messaging"}
		return c
	}
	change := func(key string, value any) jwt.MapClaims {
		c := good()
		if value == nil {
			delete(c, key)
		} else {
			c[key] = value
		}
		return c
	}

	require.Equal(t, http.StatusOK, getTenants(t, env, signWith(t, jwt.SigningMethodES256, k.ec, ecKid, good())))
	require.Equal(t, http.StatusOK, getTenants(t, env, signWith(t, jwt.SigningMethodES256, k.ec, ecKid, change("aud", "messaging"))))

	hs, err := SignToken(testSecret, Claims{Role: RoleAdmin, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: "https://issuer.example", Audience: jwt.ClaimStrings{"messaging"}}}, time.Hour)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, getTenants(t, env, hs), "HS256 tokens with iss and aud pass")

	cases := []struct {
		name   string
		claims jwt.MapClaims
		want   string
	}{
		{"wrong issuer", change("iss", "https://evil.example"), "iss claim is not the expected issuer"},
		{"missing issuer", change("iss", nil), "no iss claim"},
		{"wrong audience", change("aud", "someone-else"), "aud claim does not contain"},
		{"missing audience", change("aud", nil), "no aud claim"},
		{"audience not a string", change("aud", 5), "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			token := signWith(t, jwt.SigningMethodES256, k.ec, ecKid, tc.claims)
			rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: token})
			requireProblem(t, rec, http.StatusUnauthorized, tc.want)
		})
	}
	require.Equal(t, http.StatusUnauthorized, getTenants(t, env, adminToken(t)), "HS256 token without iss")
}

func TestNewHandlerKeyConfig(t *testing.T) {
	t.Parallel()
	keys := publicKeys(t)
	base := Config{DefaultWorkerCount: 3, MaxWorkerCount: 64}
	build := func(cfg Config) error {
		_, err := NewHandler(cfg, newFakeTenants(), &fakePublisher{}, &fakeMessages{}, nil,
			prometheus.NewRegistry(), nil, slog.New(slog.DiscardHandler))
		return err
	}

	require.ErrorContains(t, build(base), "set JWTSecret (HS256), PublicKeys (RS256, ES256) or both")

	onlyKeys := base
	onlyKeys.PublicKeys = keys
	require.ErrorContains(t, build(onlyKeys), "CursorKey", "a cursor key cannot come from public keys")

	onlyKeys.CursorKey = testCursorKey
	require.NoError(t, build(onlyKeys))

	wrongAlg := onlyKeys
	wrongAlg.PublicKeys = []PublicKey{{ID: "x", Algorithm: AlgES256, Key: keys[0].Key}}
	require.ErrorContains(t, build(wrongAlg), "cannot have alg")

	dup := onlyKeys
	dup.PublicKeys = []PublicKey{keys[0], keys[0]}
	require.ErrorContains(t, build(dup), "kid is used twice")
}
