package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DevSecretPath returns the file where development mode keeps its secret.
// Both of its sources must be absolute paths: os.UserConfigDir rejects a
// relative XDG_CONFIG_HOME, and checkDevSecretFile a relative
// DEV_SECRET_FILE.
func (c *Config) DevSecretPath() (string, error) {
	if c.DevSecretFile != "" {
		if err := checkDevSecretFile(c.DevSecretFile); err != nil {
			return "", err
		}
		return c.DevSecretFile, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find a directory for the development secret: %w; "+
			"set XDG_CONFIG_HOME or DEV_SECRET_FILE to an absolute path", err)
	}
	return filepath.Join(dir, "messaging-server", "dev-jwt-secret"), nil
}

// checkDevSecretFile rejects a relative DEV_SECRET_FILE. A relative path
// names another file in each working directory, so a server and a token
// command started in different directories would use different secrets,
// and the server would reject the command's tokens.
func checkDevSecretFile(path string) error {
	if path == "" || filepath.IsAbs(path) {
		return nil
	}
	return fmt.Errorf("DEV_SECRET_FILE is %q, a relative path: give an absolute path, "+
		"because a relative one names another file in each working directory", path)
}

// DevSecret is the source of the secret that EnsureDevSecret filled in.
type DevSecret int

const (
	// DevSecretUnused means JWTSecret was already set or Dev is off.
	DevSecretUnused DevSecret = iota
	// DevSecretRead means the secret was read from the file that an earlier
	// run created.
	DevSecretRead
	// DevSecretCreated means no file existed, so a new secret was generated
	// and kept. A server started earlier with another file has another
	// secret.
	DevSecretCreated
)

// EnsureDevSecret fills JWTSecret in development mode: it reads the secret
// kept by an earlier run, or creates a random one and keeps it with mode
// 0600, so tokens minted by the token command stay valid across restarts.
// It does nothing when JWTSecret is already set or Dev is off.
func (c *Config) EnsureDevSecret() (DevSecret, error) {
	if c.JWTSecret != "" || !c.Dev {
		return DevSecretUnused, nil
	}
	path, err := c.DevSecretPath()
	if err != nil {
		return DevSecretUnused, err
	}
	source, err := c.readOrCreateDevSecret(path)
	if errors.Is(err, fs.ErrExist) {
		// Another process created the file first: use its secret.
		source, err = c.readOrCreateDevSecret(path)
	}
	if errors.Is(err, fs.ErrExist) {
		// The name exists, yet reading it finds no file: a dangling
		// symbolic link.
		return DevSecretUnused, fmt.Errorf("development secret %s exists but cannot be read "+
			"(is it a symbolic link to a missing file?): remove it or set DEV_SECRET_FILE", path)
	}
	return source, err
}

// readOrCreateDevSecret reads the secret in path, or creates it when path
// does not exist. The error wraps fs.ErrExist when path appeared between
// the two steps.
func (c *Config) readOrCreateDevSecret(path string) (DevSecret, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		secret := strings.TrimSpace(string(data))
		if len(secret) < MinJWTSecretBytes {
			return DevSecretUnused, fmt.Errorf("development secret in %s is shorter than %d bytes: delete the file to generate a new one",
				path, MinJWTSecretBytes)
		}
		c.JWTSecret = secret
		return DevSecretRead, nil
	case !errors.Is(err, fs.ErrNotExist):
		return DevSecretUnused, fmt.Errorf("read development secret: %w", err)
	}

	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return DevSecretUnused, fmt.Errorf("generate development secret: %w", err)
	}
	secret := hex.EncodeToString(buf)
	if err := writeOnce(path, secret+"\n"); err != nil {
		return DevSecretUnused, err
	}
	c.JWTSecret = secret
	return DevSecretCreated, nil
}

// writeOnce creates path with content and mode 0600 unless it exists, in
// which case it returns an error wrapping fs.ErrExist. The file appears
// whole or not at all: it is written under a temporary name and then
// hard-linked into place.
func writeOnce(path, content string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory for development secret: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".dev-jwt-secret-*")
	if err != nil {
		return fmt.Errorf("write development secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(content)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write development secret: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("write development secret: %w", err)
	}
	return nil
}
