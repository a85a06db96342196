// Command server runs the multi-tenant messaging server.
//
//	server [flags]                 run the HTTP API, the consumers and /metrics
//	server migrate [flags]         apply the SQL migrations and exit
//	server token -role admin       print a signed admin JWT
//	server token -role tenant -tenant ID
//
// Every flag can also be set by an environment variable; run with -h for
// the list.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-messaging-system/messaging/config"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run dispatches to the subcommand and returns the exit code.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "migrate" || args[0] == "token" || args[0] == "serve") {
		cmd, args = args[0], args[1:]
	}
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fmt.Fprint(stdout, usage)
			fmt.Fprint(stdout, config.Usage())
			return 0
		}
	}

	var err error
	switch cmd {
	case "migrate":
		err = migrate(args, getenv, stderr)
	case "token":
		err = printToken(args, getenv, stdout, stderr)
	default:
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		err = serve(ctx, args, getenv, stderr)
	}
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "error: %v\n", err)
			return 2
		}
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// usageError is a mistake in the command line; it exits with status 2.
type usageError struct{ error }

const usage = `Usage:
  server [flags]                           run the server
  server migrate [flags]                   apply the database migrations and exit
  server token -role admin [flags]         print a signed admin token
  server token -role tenant -tenant ID     print a signed token for one tenant
  token flags: -ttl DURATION (default 24h)

`
