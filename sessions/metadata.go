package sessions

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxMetadataBytes caps a session's metadata, measured as its JSON
// encoding. Metadata describes a session (client name, instance, remote
// address); it is not a place for payloads, and every List and Get carries
// it.
const MaxMetadataBytes = 1024

// IssueOption configures one [Manager.Issue] call.
type IssueOption func(*issueOptions)

type issueOptions struct {
	metadata map[string]string
}

// WithMetadata attaches md to the new session; it comes back in every
// [Session] read from the store. Keys must be non-empty, keys and values
// valid UTF-8 without NUL characters, and the JSON encoding at most
// [MaxMetadataBytes], or Issue fails with [ErrInvalidMetadata]. The map is
// copied.
func WithMetadata(md map[string]string) IssueOption {
	return func(o *issueOptions) { o.metadata = md }
}

// encodeMetadata validates md and returns its JSON, or nil for none.
func encodeMetadata(md map[string]string) ([]byte, error) {
	if len(md) == 0 {
		return nil, nil
	}
	for k, v := range md {
		switch {
		case k == "":
			return nil, fmt.Errorf("%w: empty key", ErrInvalidMetadata)
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			// encoding/json would silently replace invalid bytes.
			return nil, fmt.Errorf("%w: key or value for %q is not valid UTF-8", ErrInvalidMetadata, k)
		case strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0:
			// PostgreSQL's jsonb cannot store U+0000; refusing it here
			// makes every store agree, and a caller's mistake is not
			// reported as a store failure.
			return nil, fmt.Errorf("%w: key or value for %q contains a NUL character", ErrInvalidMetadata, k)
		}
	}
	b, err := json.Marshal(md)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidMetadata, err)
	}
	if len(b) > MaxMetadataBytes {
		return nil, fmt.Errorf("%w: %d bytes of JSON (max %d)", ErrInvalidMetadata, len(b), MaxMetadataBytes)
	}
	return b, nil
}

// decodeMetadata reads what encodeMetadata wrote (via jsonb, which may
// reorder keys; a map does not care).
func decodeMetadata(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var md map[string]string
	if err := json.Unmarshal(b, &md); err != nil {
		return nil, fmt.Errorf("stored metadata is not a JSON object of strings: %w", err)
	}
	return md, nil
}
