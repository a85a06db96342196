package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/config"
	"github.com/go-messaging-system/messaging/persistence"
)

// tokenFlags are the flags of the token subcommand. Every other flag is a
// configuration flag, so -dev, -config and -jwt-secret work as for serve.
var tokenFlags = map[string]bool{"role": true, "tenant": true, "ttl": true}

// printToken signs a token with the configured secret and prints it.
func printToken(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	own, rest := splitFlags(args, tokenFlags)
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	role := fs.String("role", "", "admin or tenant")
	tenant := fs.String("tenant", "", "tenant id, for -role tenant")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	if err := fs.Parse(own); err != nil {
		return usageError{fmt.Errorf("token: %w", err)}
	}

	claims := api.Claims{Role: *role, TenantID: *tenant}
	switch *role {
	case api.RoleAdmin:
		if *tenant != "" {
			return usageError{fmt.Errorf("token: -tenant is only for -role tenant")}
		}
	case api.RoleTenant:
		if !persistence.ValidTenantID(*tenant) {
			return usageError{fmt.Errorf("token: -tenant %q is not a valid tenant id (lowercase letters, digits, '-' and '_', at most 63)", *tenant)}
		}
	default:
		return usageError{fmt.Errorf("token: -role must be admin or tenant, got %q", *role)}
	}

	cfg, source, _, err := loadConfig(rest, getenv, stderr)
	if err != nil {
		return err
	}
	if source == config.DevSecretCreated {
		// A -dev server that is already running read another secret file,
		// so it rejects a token signed with this new secret (401).
		path, _ := cfg.DevSecretPath()
		fmt.Fprintf(stderr, "token: created a new development secret in %s. Servers started from now on "+
			"with the same settings accept this token, but a -dev server that is already running uses another "+
			"secret file and rejects it: give both the same DEV_SECRET_FILE (or XDG_CONFIG_HOME and HOME), "+
			"or set JWT_SECRET\n", path)
	}
	if cfg.JWTSecret == "" {
		return usageError{fmt.Errorf("token: this command signs HS256 tokens only: set JWT_SECRET or pass -dev " +
			"(RS256 and ES256 tokens are signed by whoever holds the private key)")}
	}
	// A server with JWT_ISSUER or JWT_AUDIENCE requires those claims.
	claims.Issuer = cfg.JWTIssuer
	if cfg.JWTAudience != "" {
		claims.Audience = jwt.ClaimStrings{cfg.JWTAudience}
	}
	token, err := api.SignToken([]byte(cfg.JWTSecret), claims, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, token)
	return nil
}

// splitFlags separates the flags named in own (with their values) from the
// other arguments. It accepts -name value, --name value and -name=value.
func splitFlags(args []string, own map[string]bool) (mine, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		name := strings.TrimLeft(a, "-")
		name, _, hasValue := strings.Cut(name, "=")
		if !strings.HasPrefix(a, "-") || !own[name] {
			rest = append(rest, a)
			continue
		}
		mine = append(mine, a)
		if !hasValue && i+1 < len(args) {
			i++
			mine = append(mine, args[i])
		}
	}
	return mine, rest
}
