package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/config"
)

// writeKeysFile writes a PEM file with one P-256 public key under kid.
func writeKeysFile(t *testing.T, kid string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "keys.pem")
	block := &pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"kid": kid}, Bytes: der}
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(block), 0o600))
	return path
}

func TestAPIConfigLoadsPublicKeys(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.JWTPublicKeysFile = writeKeysFile(t, "signer-1")
	apiCfg, err := apiConfig(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	require.Len(t, apiCfg.PublicKeys, 1)
	require.Equal(t, "signer-1", apiCfg.PublicKeys[0].ID)
	require.Equal(t, api.AlgES256, apiCfg.PublicKeys[0].Algorithm)
	require.Len(t, apiCfg.CursorKey, 32, "without any secret the cursor key is random")
	require.Empty(t, apiCfg.JWTSecret)
}

func TestAPIConfigCursorSecret(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.JWTSecret = testSecret
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	apiCfg, err := apiConfig(cfg, logger)
	require.NoError(t, err)
	require.Empty(t, apiCfg.CursorKey, "derived from JWT_SECRET by the api package")

	cfg.CursorSecret = "cursor-secret-cursor-secret-cursor-secret"
	apiCfg, err = apiConfig(cfg, logger)
	require.NoError(t, err)
	require.Equal(t, []byte(cfg.CursorSecret), apiCfg.CursorKey)
}

func TestServeRejectsBadPublicKeysFile(t *testing.T) {
	t.Parallel()
	bad := filepath.Join(t.TempDir(), "bad.pem")
	require.NoError(t, os.WriteFile(bad, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600))
	for _, path := range []string{bad, filepath.Join(t.TempDir(), "missing.pem")} {
		code, _, errOut := runCmd(t, map[string]string{"JWT_PUBLIC_KEYS_FILE": path})
		require.Equal(t, 2, code, errOut)
		require.Contains(t, errOut, "invalid JWT_PUBLIC_KEYS_FILE")
	}
}

func TestTokenCommandNeedsSecret(t *testing.T) {
	t.Parallel()
	code, out, errOut := runCmd(t, map[string]string{"JWT_PUBLIC_KEYS_FILE": writeKeysFile(t, "k")},
		"token", "-role", "admin")
	require.Equal(t, 2, code)
	require.Empty(t, out)
	require.Contains(t, errOut, "signs HS256 tokens only")
}

func TestTokenCommandSetsIssuerAndAudience(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"JWT_SECRET": testSecret, "JWT_ISSUER": "https://issuer.example", "JWT_AUDIENCE": "messaging"}
	code, out, errOut := runCmd(t, vars, "token", "-role", "admin")
	require.Equal(t, 0, code, errOut)
	claims := parseClaims(t, out)
	require.Equal(t, "https://issuer.example", claims.Issuer)
	require.Equal(t, []string{"messaging"}, []string(claims.Audience))
}
