package api

import (
	"net/http"
	"time"
)

// Timeouts and limits of NewServer. WriteTimeout leaves room for a publish
// that waits for broker confirms (10 s by default in package transport)
// plus a database lookup.
const (
	ServerReadHeaderTimeout = 5 * time.Second
	ServerReadTimeout       = 30 * time.Second
	ServerWriteTimeout      = 30 * time.Second
	ServerIdleTimeout       = 120 * time.Second
	ServerMaxHeaderBytes    = 32 << 10
)

// NewServer returns an http.Server for h on addr with timeouts against slow
// clients and a 32 KiB header limit.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: ServerReadHeaderTimeout,
		ReadTimeout:       ServerReadTimeout,
		WriteTimeout:      ServerWriteTimeout,
		IdleTimeout:       ServerIdleTimeout,
		MaxHeaderBytes:    ServerMaxHeaderBytes,
	}
}
