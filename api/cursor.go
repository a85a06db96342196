package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"

	"github.com/go-messaging-system/messaging/persistence"
)

// A cursor is base64url (no padding) of
//
//	version (1 byte) | TxID (8 bytes, big endian) | ID (8 bytes, big endian) | MAC (16 bytes)
//
// where MAC is HMAC-SHA256 over a domain label, the tenant id and the first
// 17 bytes, truncated to 128 bits. The tenant id is in the MAC but not in
// the cursor, so a cursor works only for the tenant it was made for and
// does not show that tenant's id.
const (
	cursorVersion    = 1
	cursorBodyBytes  = 1 + 8 + 8
	cursorMACBytes   = 16
	cursorRawBytes   = cursorBodyBytes + cursorMACBytes
	cursorLabel      = "messaging cursor v1"
	maxCursorEncoded = 64
)

var (
	cursorEncoding     = base64.RawURLEncoding.Strict()
	cursorEncodedBytes = cursorEncoding.EncodedLen(cursorRawBytes)
)

var errInvalidCursor = errors.New("invalid cursor: pass a next_cursor value from an earlier response of the same route and tenant, or none to start")

type cursorCodec struct {
	key []byte
}

// encode returns the cursor of pos for tenantID.
func (c cursorCodec) encode(tenantID string, pos persistence.Position) string {
	raw := make([]byte, cursorBodyBytes, cursorRawBytes)
	raw[0] = cursorVersion
	binary.BigEndian.PutUint64(raw[1:9], pos.TxID)
	binary.BigEndian.PutUint64(raw[9:17], uint64(pos.ID))
	raw = append(raw, c.mac(tenantID, raw)...)
	return cursorEncoding.EncodeToString(raw)
}

// decode returns the position of cursor, which must have been made for
// tenantID. The empty cursor is the start.
func (c cursorCodec) decode(tenantID, cursor string) (persistence.Position, error) {
	if cursor == "" {
		return persistence.Position{}, nil
	}
	if len(cursor) > maxCursorEncoded {
		return persistence.Position{}, errInvalidCursor
	}
	// The decoder skips \r and \n, so the length check also rejects
	// cursors with line breaks added.
	raw, err := cursorEncoding.DecodeString(cursor)
	if err != nil || len(cursor) != cursorEncodedBytes || len(raw) != cursorRawBytes || raw[0] != cursorVersion {
		return persistence.Position{}, errInvalidCursor
	}
	body, mac := raw[:cursorBodyBytes], raw[cursorBodyBytes:]
	if !hmac.Equal(mac, c.mac(tenantID, body)) {
		return persistence.Position{}, errInvalidCursor
	}

	pos := persistence.Position{
		TxID: binary.BigEndian.Uint64(body[1:9]),
		ID:   int64(binary.BigEndian.Uint64(body[9:17])),
	}
	return pos, nil
}

func (c cursorCodec) mac(tenantID string, body []byte) []byte {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(cursorLabel))
	m.Write([]byte{0})
	m.Write([]byte(tenantID))
	m.Write([]byte{0})
	m.Write(body)
	return m.Sum(nil)[:cursorMACBytes]
}
