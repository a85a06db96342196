package api

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	tenantIDPattern = `^[a-z0-9][a-z0-9_-]{0,62}$`

	// maxNameRunes caps a tenant name; a longer one gets 400.
	maxNameRunes = 200
	// maxMessageIDBytes keeps message ids inside the 255-byte AMQP
	// short string that carries them. A longer id gets 400.
	maxMessageIDBytes = 200
	// generatedSlugRunes bounds the part of a generated tenant id that
	// comes from the name, leaving room for the random suffix.
	generatedSlugRunes = 40
)

var tenantIDRegexp = regexp.MustCompile(tenantIDPattern)

func validTenantID(id string) bool {
	return tenantIDRegexp.MatchString(id)
}

// normalizeName trims name and checks it is 1..200 characters of valid
// UTF-8 without control characters.
func normalizeName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return "", errors.New("name is required and must not be blank")
	}
	if !utf8.ValidString(name) {
		return "", errors.New("name must be valid UTF-8")
	}
	if n := utf8.RuneCountInString(name); n > maxNameRunes {
		return "", fmt.Errorf("name has %d characters, the maximum is %d", n, maxNameRunes)
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return "", errors.New("name must not contain control characters")
	}
	return name, nil
}

// checkWorkerCount checks that n is in 1..maxCount.
func checkWorkerCount(n, maxCount int) error {
	if n < 1 || n > maxCount {
		return fmt.Errorf("worker_count must be between 1 and %d, got %d", maxCount, n)
	}
	return nil
}

// checkMessageID checks that id is 1..200 bytes of printable UTF-8 (spaces
// allowed).
func checkMessageID(id string) error {
	if id == "" {
		return errors.New("message_id must not be empty; omit it to get a generated one")
	}
	if len(id) > maxMessageIDBytes {
		return fmt.Errorf("message_id has %d bytes, the maximum is %d", len(id), maxMessageIDBytes)
	}
	if !utf8.ValidString(id) {
		return errors.New("message_id must be valid UTF-8")
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("message_id contains the unprintable character %U", r)
		}
	}
	return nil
}

// newMessageID returns a random RFC 9562 version 4 UUID.
func newMessageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails since Go 1.24.
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80

	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// newTenantID returns an id made of a slug of name and 8 random hex
// characters, such as "tenant-one-3f9a2c1b".
func newTenantID(name string) string {
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])

	slug := slugify(name)
	if slug == "" {
		slug = "tenant"
	}
	return slug + "-" + hex.EncodeToString(suffix[:])
}

// slugify keeps the ASCII letters and digits of s in lower case and joins
// the runs between them with single hyphens.
func slugify(s string) string {
	var b strings.Builder
	pendingHyphen := false
	for _, r := range strings.ToLower(s) {
		if b.Len() >= generatedSlugRunes {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			if pendingHyphen && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			pendingHyphen = false
			continue
		}
		pendingHyphen = true
	}
	return b.String()
}
