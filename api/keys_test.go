package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// signingKeys are private keys for the public-key token tests. RSA key
// generation takes a while under the race detector, so the keys are made
// once for the package.
type signingKeys struct {
	rsa      *rsa.PrivateKey
	rsaOther *rsa.PrivateKey // not in any key set
	ec       *ecdsa.PrivateKey
	ecOther  *ecdsa.PrivateKey // not in any key set
}

var testSigningKeys = sync.OnceValue(func() signingKeys {
	mustRSA := func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	}
	mustEC := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	}
	return signingKeys{rsa: mustRSA(), rsaOther: mustRSA(), ec: mustEC(), ecOther: mustEC()}
})

// pemBlock encodes pub as a PKIX PUBLIC KEY block with the given headers.
func pemBlock(t *testing.T, pub any, headers map[string]string) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Headers: headers, Bytes: der}))
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(pub *rsa.PublicKey, kid string) map[string]any {
	m := map[string]any{"kty": "RSA", "n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes())}
	if kid != "" {
		m["kid"] = kid
	}
	return m
}

func ecJWK(t *testing.T, pub *ecdsa.PublicKey, kid string) map[string]any {
	t.Helper()
	point, err := pub.Bytes()
	require.NoError(t, err)
	m := map[string]any{"kty": "EC", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])}
	if kid != "" {
		m["kid"] = kid
	}
	return m
}

func jwks(t *testing.T, keys ...map[string]any) []byte {
	t.Helper()
	data, err := json.Marshal(map[string]any{"keys": keys})
	require.NoError(t, err)
	return data
}

func TestParsePublicKeysPEM(t *testing.T) {
	t.Parallel()
	k := testSigningKeys()
	data := pemBlock(t, &k.rsa.PublicKey, map[string]string{"kid": "rsa-2024"}) +
		pemBlock(t, &k.ec.PublicKey, map[string]string{"kid": "ec-2024"}) +
		string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsaOther.PublicKey)}))

	keys, skipped, err := ParsePublicKeys([]byte(data))
	require.NoError(t, err)
	require.Empty(t, skipped)
	require.Len(t, keys, 3)

	require.Equal(t, "rsa-2024", keys[0].ID)
	require.Equal(t, AlgRS256, keys[0].Algorithm)
	require.True(t, k.rsa.PublicKey.Equal(keys[0].Key))
	require.Equal(t, "ec-2024", keys[1].ID)
	require.Equal(t, AlgES256, keys[1].Algorithm)
	require.True(t, k.ec.PublicKey.Equal(keys[1].Key))

	// Without a kid header the kid is the RFC 7638 thumbprint, the same
	// one a JWK Set without kid gets.
	fromJWKS, _, err := ParsePublicKeys(jwks(t, rsaJWK(&k.rsaOther.PublicKey, "")))
	require.NoError(t, err)
	require.Equal(t, fromJWKS[0].ID, keys[2].ID)
	require.Len(t, keys[2].ID, 43, "base64url of 32 bytes")
}

// The thumbprint of the RSA key in RFC 7638, section 3.1, is the value
// that section gives.
func TestThumbprintMatchesRFC7638Example(t *testing.T) {
	t.Parallel()
	const n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
	keys, _, err := ParsePublicKeys([]byte(`{"keys": [{"kty": "RSA", "e": "AQAB", "n": "` + n + `"}]}`))
	require.NoError(t, err)
	require.Equal(t, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", keys[0].ID)
}

func TestParsePublicKeysJWKS(t *testing.T) {
	t.Parallel()
	k := testSigningKeys()
	data := jwks(t,
		with(rsaJWK(&k.rsa.PublicKey, "r1"), "alg", "RS256"),
		with(ecJWK(t, &k.ec.PublicKey, "e1"), "use", "sig"),
		with(rsaJWK(&k.rsaOther.PublicKey, "enc-key"), "use", "enc"),
		with(rsaJWK(&k.rsaOther.PublicKey, "ps-key"), "alg", "PS256"),
	)
	keys, skipped, err := ParsePublicKeys(data)
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Equal(t, "r1", keys[0].ID)
	require.Equal(t, AlgRS256, keys[0].Algorithm)
	require.Equal(t, "e1", keys[1].ID)
	require.Equal(t, AlgES256, keys[1].Algorithm)
	require.True(t, k.ec.PublicKey.Equal(keys[1].Key))

	require.Len(t, skipped, 2)
	require.Contains(t, skipped[0], `"enc-key"`)
	require.Contains(t, skipped[1], `"PS256"`)
}

func TestParsePublicKeysRejects(t *testing.T) {
	t.Parallel()
	k := testSigningKeys()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	privateDER, err := x509.MarshalPKCS8PrivateKey(k.ec)
	require.NoError(t, err)
	offCurve := ecJWK(t, &k.ec.PublicKey, "off")
	offCurve["y"] = offCurve["x"]

	cases := []struct {
		name string
		data string
		want string
	}{
		{"empty file", "", "no RS256 or ES256 public key"},
		{"garbage", "not a key", "not valid PEM"},
		{"private key PEM", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privateDER})), "never a private key"},
		{"RSA key too small", pemBlock(t, &small.PublicKey, nil), "1024 bits"},
		{"curve P-384", pemBlock(t, &p384.PublicKey, nil), "only P-256"},
		{"unknown PEM header", pemBlock(t, &k.ec.PublicKey, map[string]string{"Kid": "x"}), `unknown PEM header "Kid"`},
		{"kid with control character", pemBlock(t, &k.ec.PublicKey, map[string]string{"kid": "a\tb"}), "printable ASCII"},
		{"duplicate kid", pemBlock(t, &k.ec.PublicKey, map[string]string{"kid": "a"}) +
			pemBlock(t, &k.rsa.PublicKey, map[string]string{"kid": "a"}), `kid "a" is used by more than one key`},
		{"JWKS without keys", `{"foo": []}`, `"keys" array is missing`},
		{"JWKS not JSON", `{"keys": [`, "parse JWK Set"},
		{"JWK with private part", string(jwks(t, with(ecJWK(t, &k.ec.PublicKey, "p"), "d", "AAAA"))), "private key material"},
		{"JWK EC with RS256", string(jwks(t, with(ecJWK(t, &k.ec.PublicKey, "x"), "alg", "RS256"))), `cannot have alg "RS256"`},
		{"JWK RSA with ES256", string(jwks(t, with(rsaJWK(&k.rsa.PublicKey, "x"), "alg", "ES256"))), `cannot have alg "ES256"`},
		{"JWK even exponent", string(jwks(t, with(rsaJWK(&k.rsa.PublicKey, "x"), "e", "AAI"))), "must be odd"},
		{"JWK padded base64", string(jwks(t, with(rsaJWK(&k.rsa.PublicKey, "x"), "e", "AQAB=="))), `"e" must be`},
		{"JWK point off the curve", string(jwks(t, offCurve)), "invalid P-256 point"},
		{"JWK unknown kty", string(jwks(t, map[string]any{"kty": "oct", "k": "c2VjcmV0"})), `kty "oct"`},
		{"JWK curve P-384", string(jwks(t, map[string]any{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"})), `crv "P-384"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := ParsePublicKeys([]byte(tc.data))
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestLoadPublicKeys(t *testing.T) {
	t.Parallel()
	k := testSigningKeys()
	path := filepath.Join(t.TempDir(), "keys.pem")
	require.NoError(t, os.WriteFile(path, []byte(pemBlock(t, &k.ec.PublicKey, map[string]string{"kid": "a"})), 0o600))
	keys, _, err := LoadPublicKeys(path)
	require.NoError(t, err)
	require.Len(t, keys, 1)

	_, _, err = LoadPublicKeys(filepath.Join(t.TempDir(), "missing.pem"))
	require.ErrorContains(t, err, "no such file")

	big := filepath.Join(t.TempDir(), "big.pem")
	require.NoError(t, os.WriteFile(big, []byte(strings.Repeat("x", maxKeysFileBytes+1)), 0o600))
	_, _, err = LoadPublicKeys(big)
	require.ErrorContains(t, err, "larger than")
}
