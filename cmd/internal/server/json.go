package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agentsessions/agentsessions/sessions"
)

// Session is a session as the API (and the CLI's --json) shows it. The
// token digest is never shown.
type Session struct {
	ID        string `json:"id"`
	AgentID   string `json:"agent_id"`
	IssuedAt  string `json:"issued_at"`  // RFC 3339, UTC
	ExpiresAt string `json:"expires_at"` // RFC 3339, UTC
	// LastUsedAt is the last use the store has (RFC 3339, UTC): recorded
	// in batches under an idle timeout or the evict-least-recently-used
	// policy, else the issue time.
	LastUsedAt string            `json:"last_used_at,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
}

// NewSession converts a library session to its JSON form.
func NewSession(s sessions.Session) Session {
	out := Session{
		ID:        s.ID,
		AgentID:   s.AgentID,
		IssuedAt:  s.IssuedAt.UTC().Format(time.RFC3339),
		ExpiresAt: s.ExpiresAt.UTC().Format(time.RFC3339),
		Metadata:  s.Metadata,
	}
	if !s.LastUsedAt.IsZero() {
		out.LastUsedAt = s.LastUsedAt.UTC().Format(time.RFC3339)
	}
	return out
}

// IssuedResponse is the body of a successful issue or refresh.
type IssuedResponse struct {
	Token   string  `json:"token"`
	Session Session `json:"session"`
	// Evicted lists the sessions revoked to make room under the
	// evict-oldest policy; omitted when none were.
	Evicted []string `json:"evicted,omitempty"`
}

// SessionResponse is the body of a successful authenticate.
type SessionResponse struct {
	Session Session `json:"session"`
}

// SessionsResponse lists sessions; Sessions is never null.
type SessionsResponse struct {
	Sessions []Session `json:"sessions"`
}

// RevokedResponse says how many sessions an agent-wide revoke deleted.
type RevokedResponse struct {
	Revoked int `json:"revoked"`
}

// LimitResponse is an agent's effective limit; Override is false when the
// configured default applies.
type LimitResponse struct {
	AgentID  string `json:"agent_id"`
	Limit    int    `json:"limit"`
	Override bool   `json:"override"`
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is a machine-readable code and a human message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Request bodies.
type (
	issueRequest struct {
		AgentID  string            `json:"agent_id"`
		Metadata map[string]string `json:"metadata"`
	}
	tokenRequest struct {
		AgentID string `json:"agent_id"`
		Token   string `json:"token"`
	}
	limitRequest struct {
		Limit *int `json:"limit"`
	}
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store") // responses may carry tokens
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // an error means the client went away: nothing to do
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}

func badRequest(format string, args ...any) error {
	return &sessions.RequestError{Code: sessions.CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// missingField is a request body without a required field, or with it
// empty; it matches err (sessions.ErrMissingToken or ErrMissingAgentID), so
// the table answers 400 with the field's code and this message.
type missingField struct {
	field, example string
	err            error
}

func (e *missingField) Error() string {
	return fmt.Sprintf("field %q is missing or empty; send an object like %s", e.field, e.example)
}

func (e *missingField) Unwrap() error { return e.err }

// decode reads exactly one JSON object of at most max bytes into dst. It
// refuses, with an error for [sessions.HTTPError]:
//
//   - a Content-Type other than application/json (parameters allowed, but
//     a charset must be UTF-8), or none: 415, as every client of the API
//     sends it, and a missing type is more often a form post than JSON;
//   - a body over max: 413;
//   - invalid UTF-8, and \u escapes of lone UTF-16 surrogates, which
//     encoding/json would silently turn into U+FFFD (so two different
//     agent IDs would decode alike): 400;
//   - anything but one object, a field dst does not have (field names are
//     case-sensitive, although encoding/json matches them without case),
//     a key given twice in any object (encoding/json keeps the last), and
//     a value of the wrong type: 400.
func decode(w http.ResponseWriter, r *http.Request, max int64, dst any, example string) error {
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		return err
	}
	r.Body = http.MaxBytesReader(w, r.Body, max)
	body, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return &sessions.RequestError{Code: sessions.CodeRequestTooLarge,
			Message: fmt.Sprintf("request body is over %d bytes", tooBig.Limit)}
	case err != nil:
		return badRequest("cannot read request body: %v", err)
	case len(bytes.TrimSpace(body)) == 0:
		return badRequest("request body is empty; send a JSON object like %s", example)
	case !utf8.Valid(body):
		return badRequest("request body is not valid UTF-8; send UTF-8 JSON like %s", example)
	}
	if esc, ok := loneSurrogate(body); ok {
		return badRequest("request body has the escape %s, a lone UTF-16 surrogate: strings must be valid Unicode", esc)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err = dec.Decode(dst)
	if err == nil {
		// Anything after the object but white space is an error.
		var extra json.RawMessage
		if err = dec.Decode(&extra); err == io.EOF {
			return checkKeys(body, jsonFields(dst), example)
		}
		if err == nil {
			return badRequest("request body has more than one JSON value; send one object like %s", example)
		}
	}
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is not valid JSON; send an object like %s", example)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return badRequest("request body must be a JSON object like %s", example)
		}
		return badRequest("field %q must be a JSON %s", typ.Field, jsonKind(typ.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badRequest("unknown field %s; send an object like %s", strings.TrimPrefix(err.Error(), "json: unknown field "), example)
	default:
		return badRequest("cannot read request body: %v", err)
	}
}

// checkContentType accepts application/json, in any case, with parameters,
// but a charset must be UTF-8 (RFC 8259 section 8.1).
func checkContentType(ct string) error {
	unsupported := func(format string, args ...any) error {
		return &sessions.RequestError{Code: sessions.CodeUnsupportedMediaType, Message: fmt.Sprintf(format, args...)}
	}
	if strings.TrimSpace(ct) == "" {
		return unsupported("request has no Content-Type; send the body as Content-Type: application/json")
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return unsupported("Content-Type is %q; send the body as Content-Type: application/json", ct)
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return unsupported("Content-Type has charset %q; application/json bodies must be UTF-8", cs)
	}
	return nil
}

// loneSurrogate returns the first \uXXXX escape inside a JSON string of
// body that is a UTF-16 surrogate not part of a high-low pair. Malformed
// escapes are left to the JSON decoder.
func loneSurrogate(body []byte) (string, bool) {
	inString := false
	for i := 0; i < len(body); i++ {
		c := body[i]
		if !inString {
			inString = c == '"'
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			u, ok := unicodeEscape(body, i)
			if !ok {
				i++ // skip the escaped byte (a quote, a backslash, ...)
				continue
			}
			switch {
			case u >= 0xD800 && u < 0xDC00:
				if lo, ok := unicodeEscape(body, i+6); ok && lo >= 0xDC00 && lo < 0xE000 {
					i += 11 // the pair
					continue
				}
				return string(body[i : i+6]), true
			case u >= 0xDC00 && u < 0xE000:
				return string(body[i : i+6]), true
			}
			i += 5
		}
	}
	return "", false
}

// unicodeEscape decodes the \uXXXX escape at body[i:], if there is one.
func unicodeEscape(body []byte, i int) (rune, bool) {
	if i+6 > len(body) || body[i] != '\\' || body[i+1] != 'u' {
		return 0, false
	}
	var u rune
	for _, h := range body[i+2 : i+6] {
		switch {
		case h >= '0' && h <= '9':
			u = u<<4 | rune(h-'0')
		case h >= 'a' && h <= 'f':
			u = u<<4 | rune(h-'a'+10)
		case h >= 'A' && h <= 'F':
			u = u<<4 | rune(h-'A'+10)
		default:
			return 0, false
		}
	}
	return u, true
}

// jsonFields lists the JSON names of the fields of the struct dst points to.
func jsonFields(dst any) []string {
	t := reflect.TypeOf(dst).Elem()
	var out []string
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// checkKeys walks body, one JSON value the decoder accepted, and refuses
// anything but an object, a top-level key that is not exactly one of
// fields, and a key repeated in any object.
func checkKeys(body []byte, fields []string, example string) error {
	type frame struct {
		object  bool
		wantKey bool
		keys    map[string]bool
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var (
		stack []*frame
		field string // the top-level key whose value is being read
	)
	for first := true; ; first = false {
		tok, err := dec.Token()
		if err != nil {
			return nil // the decoder has read it: cannot happen
		}
		if first && tok != json.Delim('{') {
			return badRequest("request body must be a JSON object like %s", example)
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.wantKey && tok != json.Delim('}') {
			key, _ := tok.(string)
			switch {
			case top.keys[key] && len(stack) == 1:
				return badRequest("field %q appears more than once; send each field once", key)
			case top.keys[key]:
				return badRequest("key %q appears more than once in field %q; send each key once", key, field)
			case len(stack) == 1 && !slices.Contains(fields, key):
				for _, f := range fields {
					if strings.EqualFold(f, key) {
						return badRequest("unknown field %q: field names are case-sensitive, did you mean %q?", key, f)
					}
				}
				return badRequest("unknown field %q; send an object like %s", key, example)
			}
			if len(stack) == 1 {
				field = key
			}
			top.keys[key] = true
			top.wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, wantKey: true, keys: map[string]bool{}})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return nil
			}
		}
		// A value ended: an object's next token is a key.
		if top := stack[len(stack)-1]; top.object {
			top.wantKey = true
		}
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "map", "struct":
		return "object of strings"
	case "int", "int64":
		return "integer"
	}
	return goKind
}
