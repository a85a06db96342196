package transport

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Config configures a Broker. Zero fields take their defaults.
type Config struct {
	// URL is the AMQP URL of the broker, for example
	// amqp://guest:guest@127.0.0.1:5672/. Required.
	URL string

	// ReconnectMin is the wait before the first re-dial after a connection
	// is lost. Default 100ms.
	ReconnectMin time.Duration

	// ReconnectMax caps the wait between re-dials, which doubles after
	// each failed attempt. Default 30s.
	ReconnectMax time.Duration

	// PublishChannels is the number of confirm-mode channels that Publish
	// and DeadLetter share. Default 4.
	PublishChannels int

	// PublishTimeout bounds one Publish or DeadLetter call, from waiting
	// for a free channel to the last confirm. Default 10s.
	PublishTimeout time.Duration

	// DialTimeout bounds the TCP connect and AMQP handshake of one dial
	// attempt. Default 10s.
	DialTimeout time.Duration

	// ConnectionName, when set, is appended to the connection_name client
	// property of both connections ("messaging-consume-<name>" and
	// "messaging-publish-<name>"), which the management UI and
	// `rabbitmqctl list_connections client_properties` show. Default none.
	ConnectionName string
}

// Defaults of Config.
const (
	DefaultReconnectMin    = 100 * time.Millisecond
	DefaultReconnectMax    = 30 * time.Second
	DefaultPublishChannels = 4
	DefaultPublishTimeout  = 10 * time.Second
	DefaultDialTimeout     = 10 * time.Second
)

// withDefaults fills zero fields and validates the rest.
func (c Config) withDefaults() (Config, error) {
	if c.URL == "" {
		return c, errors.New("invalid transport config: URL is empty; set it to the broker's amqp:// URL")
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		// A *url.Error repeats the URL, password included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return c, fmt.Errorf("invalid transport config: URL %s is not an AMQP URL "+
			"(percent-encode reserved characters in the user name and password): %w", redactedURL(c.URL), err)
	}

	c.ReconnectMin = durationOr(c.ReconnectMin, DefaultReconnectMin)
	c.ReconnectMax = durationOr(c.ReconnectMax, DefaultReconnectMax)
	c.PublishTimeout = durationOr(c.PublishTimeout, DefaultPublishTimeout)
	c.DialTimeout = durationOr(c.DialTimeout, DefaultDialTimeout)
	if c.PublishChannels == 0 {
		c.PublishChannels = DefaultPublishChannels
	}

	switch {
	case c.ReconnectMin < 0, c.ReconnectMax < 0, c.PublishTimeout < 0, c.DialTimeout < 0:
		return c, errors.New("invalid transport config: durations must not be negative")
	case c.ReconnectMin > c.ReconnectMax:
		return c, fmt.Errorf("invalid transport config: ReconnectMin %s is greater than ReconnectMax %s",
			c.ReconnectMin, c.ReconnectMax)
	case c.PublishChannels < 0:
		return c, fmt.Errorf("invalid transport config: PublishChannels %d must be positive", c.PublishChannels)
	}
	return c, nil
}

func durationOr(d, fallback time.Duration) time.Duration {
	if d == 0 {
		return fallback
	}
	return d
}

// redactedURL returns raw without its password, for logs.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid url)"
	}
	return u.Redacted()
}
