package config_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/config"
)

func TestLoadPublicKeysWithoutSecret(t *testing.T) {
	t.Parallel()
	c, err := config.Load(nil, env(map[string]string{
		"JWT_PUBLIC_KEYS_FILE": "/etc/messaging/jwks.json",
		"JWT_ISSUER":           "https://issuer.example",
		"JWT_AUDIENCE":         "messaging",
	}), discard())
	require.NoError(t, err)
	require.Empty(t, c.JWTSecret)
	require.Equal(t, "/etc/messaging/jwks.json", c.JWTPublicKeysFile)
	require.Equal(t, "https://issuer.example", c.JWTIssuer)
	require.Equal(t, "messaging", c.JWTAudience)
}

func TestLoadWithoutAnyTokenKeyExplainsBoth(t *testing.T) {
	t.Parallel()
	_, err := config.Load(nil, env(map[string]string{}), discard())
	require.ErrorContains(t, err, "JWT_SECRET is not set, and neither is JWT_PUBLIC_KEYS_FILE")
	require.ErrorContains(t, err, "openssl rand -hex 32")
	require.ErrorContains(t, err, "-dev")
}

func TestLoadRateLimit(t *testing.T) {
	t.Parallel()
	c, err := config.Load(nil, env(map[string]string{"JWT_SECRET": secret, "PUBLISH_RATE_LIMIT": "2.5",
		"PUBLISH_RATE_BURST": "10"}), discard())
	require.NoError(t, err)
	require.Equal(t, 2.5, c.PublishRateLimit)
	require.Equal(t, 10, c.PublishRateBurst)

	file := writeFile(t, `{"publish_rate_limit": 100, "publish_rate_burst": 500}`)
	c, err = config.Load([]string{"-config", file}, env(map[string]string{"JWT_SECRET": secret}), discard())
	require.NoError(t, err)
	require.Equal(t, 100.0, c.PublishRateLimit)
	require.Equal(t, 500, c.PublishRateBurst)

	c, err = config.Load(nil, env(map[string]string{"JWT_SECRET": secret}), discard())
	require.NoError(t, err)
	require.Zero(t, c.PublishRateLimit, "off by default")
}

func TestLoadRejectsInvalidAuthAndLimits(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		env  map[string]string
		want string
	}{
		"short cursor secret": {map[string]string{"JWT_SECRET": secret, "CURSOR_SECRET": "short"}, "CURSOR_SECRET is 5 bytes"},
		"rate not a number":   {map[string]string{"JWT_SECRET": secret, "PUBLISH_RATE_LIMIT": "fast"}, "PUBLISH_RATE_LIMIT"},
		"rate NaN":            {map[string]string{"JWT_SECRET": secret, "PUBLISH_RATE_LIMIT": "NaN"}, "PUBLISH_RATE_LIMIT"},
		"rate infinite":       {map[string]string{"JWT_SECRET": secret, "PUBLISH_RATE_LIMIT": "+Inf"}, "PUBLISH_RATE_LIMIT"},
		"negative rate":       {map[string]string{"JWT_SECRET": secret, "PUBLISH_RATE_LIMIT": "-1"}, "PUBLISH_RATE_LIMIT is -1"},
		"negative burst": {map[string]string{"JWT_SECRET": secret, "PUBLISH_RATE_LIMIT": "1",
			"PUBLISH_RATE_BURST": "-5"}, "PUBLISH_RATE_BURST is -5"},
		"burst without rate": {map[string]string{"JWT_SECRET": secret, "PUBLISH_RATE_BURST": "5"}, "set PUBLISH_RATE_LIMIT too"},
		"short secret with keys": {map[string]string{"JWT_SECRET": "short", "JWT_PUBLIC_KEYS_FILE": "k.pem"},
			"JWT_SECRET is 5 bytes"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Load(nil, env(tc.env), discard())
			require.ErrorContains(t, err, tc.want)
		})
	}
}
