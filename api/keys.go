package api

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"unicode"
)

// Algorithms that a PublicKey can verify.
const (
	AlgRS256 = "RS256"
	AlgES256 = "ES256"
)

const (
	// minRSABits is the smallest RSA modulus accepted.
	minRSABits = 2048
	// maxRSABits bounds the cost of verifying one token.
	maxRSABits = 8192
	// maxKeyIDBytes bounds a kid, in the file and in a token header.
	maxKeyIDBytes = 256
	// maxKeysFileBytes bounds JWT_PUBLIC_KEYS_FILE.
	maxKeysFileBytes = 1 << 20
)

// PublicKey verifies tokens of one algorithm. A token names its key by the
// kid header, and a key never verifies a token of another algorithm.
type PublicKey struct {
	// ID is the kid that tokens signed with the matching private key carry.
	ID string
	// Algorithm is AlgRS256 for an *rsa.PublicKey or AlgES256 for an
	// *ecdsa.PublicKey on P-256.
	Algorithm string
	// Key is the *rsa.PublicKey or *ecdsa.PublicKey.
	Key crypto.PublicKey
}

// LoadPublicKeys reads a file of public keys for RS256 and ES256 tokens
// with ParsePublicKeys.
func LoadPublicKeys(path string) (keys []PublicKey, skipped []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read public keys: %w", err)
	}
	if len(data) > maxKeysFileBytes {
		return nil, nil, fmt.Errorf("public keys file %s is larger than %d bytes", path, maxKeysFileBytes)
	}
	keys, skipped, err = ParsePublicKeys(data)
	if err != nil {
		return nil, nil, fmt.Errorf("public keys file %s: %w", path, err)
	}
	return keys, skipped, nil
}

// ParsePublicKeys parses public keys in one of two formats:
//
//   - A JWK Set (RFC 7517), a JSON object {"keys": [...]}. Each key has kty
//     RSA or EC (crv P-256). Its kid is the JWK kid, or the RFC 7638
//     thumbprint when the JWK has none. Its algorithm is the JWK alg, or
//     RS256 for RSA and ES256 for EC when alg is absent. Keys with use
//     "enc" or with an algorithm other than RS256 and ES256 cannot verify
//     any token this server accepts: they are left out and described in
//     skipped.
//   - PEM blocks "PUBLIC KEY" (PKIX) or "RSA PUBLIC KEY" (PKCS #1). A block
//     may carry the PEM header "kid: NAME". Without it the kid is the RFC
//     7638 thumbprint of the key, the base64url SHA-256 of its canonical
//     JWK. The algorithm follows the key type: RS256 for RSA, ES256 for
//     P-256.
//
// RSA keys need 2048 to 8192 bits. Private keys, other curves and duplicate
// kids are errors, and so is a file without keys.
func ParsePublicKeys(data []byte) (keys []PublicKey, skipped []string, err error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		keys, skipped, err = parseJWKS(trimmed)
	} else {
		keys, err = parsePEMKeys(trimmed)
	}
	if err != nil {
		return nil, nil, err
	}
	if len(keys) == 0 {
		return nil, skipped, errors.New("no RS256 or ES256 public key found: write PEM PUBLIC KEY blocks or a JWK Set")
	}

	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if seen[k.ID] {
			return nil, nil, fmt.Errorf("kid %q is used by more than one key", k.ID)
		}
		seen[k.ID] = true
	}
	return keys, skipped, nil
}

func parsePEMKeys(data []byte) ([]PublicKey, error) {
	var keys []PublicKey
	for n := 1; ; n++ {
		block, rest := pem.Decode(data)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, fmt.Errorf("PEM block %d: not valid PEM (a kid header needs a blank line after it)", n)
			}
			return keys, nil
		}
		data = rest

		key, err := parsePEMBlock(block)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): %w", n, block.Type, err)
		}
		keys = append(keys, key)
	}
}

func parsePEMBlock(block *pem.Block) (PublicKey, error) {
	var (
		pub any
		err error
	)
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return PublicKey{}, errors.New(`unsupported block type: use "PUBLIC KEY" or "RSA PUBLIC KEY", never a private key`)
	}
	if err != nil {
		return PublicKey{}, fmt.Errorf("parse key: %w", err)
	}

	key, err := newPublicKey(pub, "")
	if err != nil {
		return PublicKey{}, err
	}
	for name, value := range block.Headers {
		if name != "kid" {
			return PublicKey{}, fmt.Errorf("unknown PEM header %q: the only header is kid", name)
		}
		if err := checkKeyID(value); err != nil {
			return PublicKey{}, err
		}
		key.ID = value
	}
	if key.ID == "" {
		if key.ID, err = thumbprint(key.Key); err != nil {
			return PublicKey{}, err
		}
	}
	return key, nil
}

// newPublicKey checks pub and pins its algorithm: alg when not empty,
// otherwise the one its type implies.
func newPublicKey(pub any, alg string) (PublicKey, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return PublicKey{}, fmt.Errorf("RSA key has %d bits: use %d to %d", bits, minRSABits, maxRSABits)
		}
		if alg != "" && alg != AlgRS256 {
			return PublicKey{}, fmt.Errorf("an RSA key cannot have alg %q: use %s", alg, AlgRS256)
		}
		return PublicKey{Algorithm: AlgRS256, Key: k}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return PublicKey{}, fmt.Errorf("EC key on curve %s: only P-256 (ES256) is supported", k.Curve.Params().Name)
		}
		if alg != "" && alg != AlgES256 {
			return PublicKey{}, fmt.Errorf("a P-256 key cannot have alg %q: use %s", alg, AlgES256)
		}
		return PublicKey{Algorithm: AlgES256, Key: k}, nil
	default:
		return PublicKey{}, fmt.Errorf("unsupported key type %T: use an RSA or P-256 key", pub)
	}
}

func checkKeyID(kid string) error {
	if kid == "" || len(kid) > maxKeyIDBytes {
		return fmt.Errorf("kid must be 1 to %d bytes", maxKeyIDBytes)
	}
	for _, r := range kid {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return fmt.Errorf("kid %q contains a character outside printable ASCII", kid)
		}
	}
	return nil
}

// jwk holds the members of a JSON Web Key that this server reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
}

func parseJWKS(data []byte) ([]PublicKey, []string, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("parse JWK Set: %w", err)
	}
	if set.Keys == nil {
		return nil, nil, errors.New(`parse JWK Set: the "keys" array is missing`)
	}

	var keys []PublicKey
	var skipped []string
	for i, raw := range set.Keys {
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			return nil, nil, fmt.Errorf("JWK %d: %w", i, err)
		}
		if reason := unusableJWK(j); reason != "" {
			skipped = append(skipped, fmt.Sprintf("JWK %d (kid %q): %s", i, j.Kid, reason))
			continue
		}
		key, err := parseJWK(j)
		if err != nil {
			return nil, nil, fmt.Errorf("JWK %d (kid %q): %w", i, j.Kid, err)
		}
		keys = append(keys, key)
	}
	return keys, skipped, nil
}

// unusableJWK returns why j can verify no token this server accepts, or ""
// when it may.
func unusableJWK(j jwk) string {
	switch {
	case j.Use != "" && j.Use != "sig":
		return fmt.Sprintf("use %q is not sig", j.Use)
	case j.Alg != "" && j.Alg != AlgRS256 && j.Alg != AlgES256:
		return fmt.Sprintf("alg %q is not RS256 or ES256", j.Alg)
	}
	return ""
}

func parseJWK(j jwk) (PublicKey, error) {
	if j.D != "" {
		return PublicKey{}, errors.New(`the key contains private key material ("d"): publish only the public key`)
	}
	var (
		pub any
		err error
	)
	switch j.Kty {
	case "RSA":
		pub, err = rsaFromJWK(j)
	case "EC":
		pub, err = ecdsaFromJWK(j)
	default:
		return PublicKey{}, fmt.Errorf("kty %q is not supported: use RSA or EC", j.Kty)
	}
	if err != nil {
		return PublicKey{}, err
	}

	key, err := newPublicKey(pub, j.Alg)
	if err != nil {
		return PublicKey{}, err
	}
	key.ID = j.Kid
	if key.ID == "" {
		key.ID, err = thumbprint(key.Key)
		return key, err
	}
	return key, checkKeyID(key.ID)
}

var jwkEncoding = base64.RawURLEncoding.Strict()

func rsaFromJWK(j jwk) (*rsa.PublicKey, error) {
	n, err := jwkEncoding.DecodeString(j.N)
	if err != nil || len(n) == 0 {
		return nil, errors.New(`"n" must be a non-empty base64url value`)
	}
	e, err := jwkEncoding.DecodeString(j.E)
	if err != nil || len(e) == 0 || len(e) > 4 {
		return nil, errors.New(`"e" must be a base64url value of 1 to 4 bytes`)
	}
	exponent := new(big.Int).SetBytes(e)
	if exponent.Int64() < 3 || exponent.Int64()%2 == 0 || exponent.Int64() > 1<<31-1 {
		return nil, fmt.Errorf(`"e" is %d: it must be odd and between 3 and 2^31-1`, exponent.Int64())
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exponent.Int64())}, nil
}

func ecdsaFromJWK(j jwk) (*ecdsa.PublicKey, error) {
	if j.Crv != "P-256" {
		return nil, fmt.Errorf("crv %q is not supported: use P-256 (ES256)", j.Crv)
	}
	x, errX := jwkEncoding.DecodeString(j.X)
	y, errY := jwkEncoding.DecodeString(j.Y)
	if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
		return nil, errors.New(`"x" and "y" must be base64url values of 32 bytes each`)
	}
	point := append([]byte{4}, append(x, y...)...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("invalid P-256 point: %w", err)
	}
	return pub, nil
}

// thumbprint returns the RFC 7638 JWK thumbprint of key: the unpadded
// base64url SHA-256 of the key's required JWK members, in lexicographic
// order and without whitespace.
func thumbprint(key crypto.PublicKey) (string, error) {
	enc := base64.RawURLEncoding
	var canonical string
	switch k := key.(type) {
	case *rsa.PublicKey:
		e := big.NewInt(int64(k.E)).Bytes()
		canonical = fmt.Sprintf(`{"e":%q,"kty":"RSA","n":%q}`, enc.EncodeToString(e), enc.EncodeToString(k.N.Bytes()))
	case *ecdsa.PublicKey:
		point, err := k.Bytes()
		if err != nil {
			return "", fmt.Errorf("encode EC key: %w", err)
		}
		x, y := point[1:33], point[33:]
		canonical = fmt.Sprintf(`{"crv":"P-256","kty":"EC","x":%q,"y":%q}`, enc.EncodeToString(x), enc.EncodeToString(y))
	default:
		return "", fmt.Errorf("unsupported key type %T", key)
	}
	sum := sha256.Sum256([]byte(canonical))
	return enc.EncodeToString(sum[:]), nil
}
