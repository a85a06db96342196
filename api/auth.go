package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/julienschmidt/httprouter"
)

// Roles a token can carry.
const (
	RoleAdmin  = "admin"
	RoleTenant = "tenant"
)

const (
	// tokenLeeway absorbs clock skew when checking exp, nbf and iat.
	tokenLeeway = 30 * time.Second
	// maxTokenBytes bounds the work spent on one token. Tokens signed by
	// SignToken are about 250 bytes.
	maxTokenBytes = 4096

	authRealm = "messaging"
)

// Claims are the claims of an API token. A tenant token carries the tenant
// id and an admin token carries none.
type Claims struct {
	Role     string `json:"role"`
	TenantID string `json:"tenant_id,omitempty"`
	jwt.RegisteredClaims
}

var _ jwt.ClaimsValidator = (*Claims)(nil)

// claimsError is the reason a correctly signed token's role or tenant_id
// is rejected.
type claimsError string

func (e claimsError) Error() string { return string(e) }

// Validate checks role and tenant_id. The JWT parser calls it after the
// time-based checks.
func (c *Claims) Validate() error {
	switch c.Role {
	case RoleAdmin:
		if c.TenantID != "" {
			return claimsError("an admin token must not carry tenant_id")
		}
	case RoleTenant:
		if !validTenantID(c.TenantID) {
			return claimsError("a tenant token needs a tenant_id matching " + tenantIDPattern)
		}
	default:
		return claimsError("the role claim must be admin or tenant")
	}
	return nil
}

// SignToken returns an HS256 token for claims that expires after ttl. It
// sets iat and exp and overwrites any values claims already had for them.
func SignToken(secret []byte, claims Claims, ttl time.Duration) (string, error) {
	if err := checkSecret(secret); err != nil {
		return "", fmt.Errorf("signing token: %w", err)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("signing token: ttl must be positive, got %s", ttl)
	}
	if err := claims.Validate(); err != nil {
		return "", fmt.Errorf("signing token: %w", err)
	}

	now := time.Now()
	claims.IssuedAt = jwt.NewNumericDate(now)
	claims.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("signing token: %w", err)
	}
	return signed, nil
}

func checkSecret(secret []byte) error {
	if len(secret) < minSecretBytes {
		return fmt.Errorf("the HS256 secret has %d bytes, need at least %d (generate one with 'openssl rand -hex 32')",
			len(secret), minSecretBytes)
	}
	return nil
}

// deriveKey returns a key for purpose that is independent of secret's other
// uses.
func deriveKey(secret []byte, purpose string) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(purpose))
	return mac.Sum(nil)
}

// tokenVerifier checks tokens against the configured keys. Each
// algorithm is pinned to its keys: HS256 verifies only with the secret, and
// RS256 and ES256 only with the public key that the kid header names, which
// must be of that algorithm. So an HS256 token whose HMAC key is a public
// key's bytes is rejected, and so is an RS256 header on an ES256 key.
type tokenVerifier struct {
	secret []byte
	keys   map[string]PublicKey
	parser *jwt.Parser
}

// Reasons why no key verifies a token. Their text is safe to send back.
var (
	errNoSecret   = keyError("HS256 tokens are not accepted: the server has no HS256 secret")
	errMissingKid = keyError("an RS256 or ES256 token needs a kid header naming its key")
	errUnknownKid = keyError("the kid header names no configured key")
	errKeyType    = keyError("the key that kid names is for another algorithm")
)

// keyError is the reason the key lookup for a token failed.
type keyError string

func (e keyError) Error() string { return string(e) }

func newTokenVerifier(secret []byte, keys []PublicKey, issuer, audience string) (*tokenVerifier, error) {
	v := &tokenVerifier{keys: make(map[string]PublicKey, len(keys))}
	var methods []string
	if len(secret) > 0 {
		if err := checkSecret(secret); err != nil {
			return nil, err
		}
		v.secret = secret
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	for _, k := range keys {
		if _, err := newPublicKey(k.Key, k.Algorithm); err != nil {
			return nil, fmt.Errorf("public key %q: %w", k.ID, err)
		}
		if err := checkKeyID(k.ID); err != nil {
			return nil, fmt.Errorf("public key %q: %w", k.ID, err)
		}
		if _, dup := v.keys[k.ID]; dup {
			return nil, fmt.Errorf("public key %q: kid is used twice", k.ID)
		}
		v.keys[k.ID] = k
		if !slices.Contains(methods, k.Algorithm) {
			methods = append(methods, k.Algorithm)
		}
	}
	if len(methods) == 0 {
		return nil, errors.New("no token key: set JWTSecret, PublicKeys or both")
	}

	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(tokenLeeway),
		jwt.WithStrictDecoding(),
	}
	if issuer != "" {
		opts = append(opts, jwt.WithIssuer(issuer))
	}
	if audience != "" {
		opts = append(opts, jwt.WithAudience(audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// parse verifies token and its claims. exp is required, and nbf and iat
// are checked when present, each with tokenLeeway. iss and aud are
// required when the verifier has an issuer or audience.
func (v *tokenVerifier) parse(token string) (*Claims, error) {
	if len(token) > maxTokenBytes {
		return nil, fmt.Errorf("%w: token is longer than %d bytes", jwt.ErrTokenMalformed, maxTokenBytes)
	}
	claims := &Claims{}
	if _, err := v.parser.ParseWithClaims(token, claims, v.key); err != nil {
		return nil, err
	}
	if err := checkNumericDates(token); err != nil {
		return nil, err
	}
	return claims, nil
}

// key returns the verification key for t. The parser has already checked
// that t's alg is one of the configured algorithms.
func (v *tokenVerifier) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if alg == jwt.SigningMethodHS256.Alg() {
		if v.secret == nil {
			return nil, errNoSecret
		}
		return v.secret, nil
	}

	kid, ok := t.Header["kid"].(string)
	if !ok || kid == "" {
		return nil, errMissingKid
	}
	k, ok := v.keys[kid]
	switch {
	case !ok:
		return nil, errUnknownKid
	case k.Algorithm != alg:
		return nil, errKeyType
	}
	return k.Key, nil
}

// checkNumericDates rejects exp, nbf and iat written as JSON strings, which
// jwt.NumericDate accepts although RFC 7519 requires numbers. It runs only
// after the signature has been verified.
func checkNumericDates(token string) error {
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return fmt.Errorf("%w: decoding payload: %w", jwt.ErrTokenMalformed, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(payload, &raw); err != nil {
		return fmt.Errorf("%w: decoding payload: %w", jwt.ErrTokenMalformed, err)
	}
	// encoding/json matches member names ignoring case, so "EXP" is exp.
	for name, v := range raw {
		if !strings.EqualFold(name, "exp") && !strings.EqualFold(name, "nbf") && !strings.EqualFold(name, "iat") {
			continue
		}
		if string(v) == "null" {
			continue
		}
		if c := v[0]; c != '-' && (c < '0' || c > '9') {
			return fmt.Errorf("%w: %s must be a number", jwt.ErrTokenMalformed, strings.ToLower(name))
		}
	}
	return nil
}

// describeTokenError returns why a token was rejected in words that are
// safe to send back: it never contains any part of the token.
func describeTokenError(err error) string {
	var ce claimsError
	var ke keyError
	switch {
	case errors.As(err, &ce):
		return string(ce)
	case errors.As(err, &ke):
		return string(ke)
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the token has expired"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "the token has no " + missingClaim(err) + " claim"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "the token is not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "the token is issued in the future (iat)"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the token's iss claim is not the expected issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "the token's aud claim does not contain the expected audience"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "the token signature is invalid or its algorithm is not accepted"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the token is malformed"
	default:
		return "the token is invalid"
	}
}

// missingClaim returns the claim that an ErrTokenRequiredClaimMissing
// error names. The jwt package states it only in the message, as "<name>
// claim is required".
func missingClaim(err error) string {
	msg := err.Error()
	for _, name := range []string{"iss", "aud"} {
		if strings.Contains(msg, name+" claim is required") {
			return name
		}
	}
	return "exp"
}

// errNoToken means the request has no bearer token at all.
var errNoToken = errors.New("missing bearer token")

// bearerToken returns the token of the request's Authorization header.
// errNoToken means there is none; any other error means the header is
// malformed.
func bearerToken(r *http.Request) (string, error) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		return "", errNoToken
	}
	if len(values) > 1 {
		return "", errors.New("more than one Authorization header")
	}

	scheme, token, found := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", errNoToken
	}
	token = strings.TrimLeft(token, " ")
	if !found || token == "" {
		return "", errors.New("the Bearer scheme needs a token")
	}
	if !isToken68(token) {
		return "", errors.New("the bearer token contains characters outside base64url")
	}
	return token, nil
}

// isToken68 reports whether s has the token68 syntax of RFC 7235.
func isToken68(s string) bool {
	trimmed := strings.TrimRight(s, "=")
	if trimmed == "" {
		return false
	}
	for i := 0; i < len(trimmed); i++ {
		c := trimmed[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/':
		default:
			return false
		}
	}
	return true
}

// authorize applies rule to the request and returns the tenant it acts on.
// When it returns false it has written the error response.
func (h *handler) authorize(w http.ResponseWriter, r *http.Request, ps httprouter.Params, rule access) (string, bool) {
	if rule == public {
		return "", true
	}
	claims, ok := h.authenticate(w, r)
	if !ok {
		return "", false
	}

	switch rule {
	case adminOnly:
		if claims.Role != RoleAdmin {
			forbidden(w, "this route needs an admin token")
			return "", false
		}
		return ps.ByName("id"), true
	case tenantOnly:
		if claims.Role != RoleTenant {
			forbidden(w, "this route needs a tenant token: publish with a token minted for the tenant, "+
				"and read a tenant's messages as admin at /api/v1/tenants/{id}/messages")
			return "", false
		}
		return claims.TenantID, true
	default:
		id := ps.ByName("id")
		// A tenant asking for any other tenant gets exactly the response for
		// an unknown tenant, before any lookup, so that neither the body
		// nor the timing reveals whether the other tenant exists.
		if claims.Role == RoleTenant && id != claims.TenantID {
			tenantNotFound(w)
			return "", false
		}
		return id, true
	}
}

// authenticate returns the verified claims of the request's token. When it
// returns false it has written a 401 response.
func (h *handler) authenticate(w http.ResponseWriter, r *http.Request) (*Claims, bool) {
	token, err := bearerToken(r)
	if errors.Is(err, errNoToken) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s"`, authRealm))
		writeProblem(w, http.StatusUnauthorized, "this route needs an Authorization: Bearer <token> header")
		return nil, false
	}
	if err != nil {
		challenge(w, "invalid_request", err.Error())
		writeProblem(w, http.StatusUnauthorized, "invalid Authorization header: "+err.Error())
		return nil, false
	}

	claims, err := h.verifier.parse(token)
	if err != nil {
		reason := describeTokenError(err)
		challenge(w, "invalid_token", reason)
		writeProblem(w, http.StatusUnauthorized, "invalid token: "+reason)
		return nil, false
	}
	return claims, true
}

// challenge sets an RFC 6750 WWW-Authenticate header.
func challenge(w http.ResponseWriter, code, description string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s", error="%s", error_description="%s"`,
		authRealm, code, challengeText(description)))
}

// challengeText keeps the characters RFC 6750 allows in error_description:
// printable ASCII except double quote and backslash.
func challengeText(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case c == '"':
			b.WriteByte('\'')
		case c < 0x20 || c > 0x7e || c == '\\':
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func forbidden(w http.ResponseWriter, detail string) {
	challenge(w, "insufficient_scope", "the token's role lacks access to this route")
	writeProblem(w, http.StatusForbidden, detail)
}
