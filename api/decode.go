package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
	"unicode/utf8"
)

// maxNameInError bounds how much of a client's field name an error repeats.
const maxNameInError = 64

// requestError is a client error and the HTTP status of its response.
type requestError struct {
	status int
	detail string
}

func (e *requestError) Error() string { return e.detail }

func badRequest(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, detail: fmt.Sprintf(format, args...)}
}

// writeRequestError writes err as a problem response with its status, or
// with 400 when err is not a *requestError.
func writeRequestError(w http.ResponseWriter, err error) {
	var re *requestError
	if errors.As(err, &re) {
		writeProblem(w, re.status, re.detail)
		return
	}
	writeProblem(w, http.StatusBadRequest, err.Error())
}

// readJSONBody checks the Content-Type and returns the body, at most
// maxBytes long.
func readJSONBody(w http.ResponseWriter, r *http.Request, maxBytes int64) ([]byte, error) {
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	if r.ContentLength > maxBytes {
		return nil, tooLarge(maxBytes)
	}

	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBytes))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge(maxBytes)
	case err != nil:
		return nil, badRequest("reading the request body failed: %v", err)
	case len(bytes.TrimSpace(data)) == 0:
		return nil, badRequest("the request body is empty; send a JSON object")
	case !utf8.Valid(data):
		// encoding/json would silently turn invalid bytes into U+FFFD.
		return nil, badRequest("the request body must be valid UTF-8")
	}
	return data, nil
}

func tooLarge(maxBytes int64) *requestError {
	return &requestError{
		status: http.StatusRequestEntityTooLarge,
		detail: fmt.Sprintf("the request body is larger than %d bytes", maxBytes),
	}
}

// checkContentType accepts application/json and application/*+json, with
// no charset or charset=utf-8.
func checkContentType(value string) error {
	unsupported := &requestError{
		status: http.StatusUnsupportedMediaType,
		detail: "Content-Type must be application/json",
	}
	if value == "" {
		return unsupported
	}
	mediaType, params, err := mime.ParseMediaType(value)
	if err != nil {
		return unsupported
	}
	if mediaType != "application/json" &&
		!(strings.HasPrefix(mediaType, "application/") && strings.HasSuffix(mediaType, "+json")) {
		return unsupported
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return &requestError{
			status: http.StatusUnsupportedMediaType,
			detail: "the only supported charset is utf-8",
		}
	}
	return nil
}

// decodeObject decodes the JSON object data into dst, a pointer to a struct
// with json tags. It is stricter than encoding/json: member names must
// match a tag exactly (encoding/json matches them ignoring case), no member
// may appear twice, and nothing but whitespace may follow the object. It
// returns the names of the members present.
func decodeObject(data []byte, dst any) (map[string]bool, error) {
	present, err := checkMembers(data, jsonNames(dst))
	if err != nil {
		return nil, err
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return nil, describeJSONError(err)
	}
	return present, nil
}

// checkMembers walks the members of the JSON object data and checks their
// names against allowed.
func checkMembers(data []byte, allowed map[string]bool) (map[string]bool, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, describeJSONError(err)
	}
	if tok != json.Delim('{') {
		return nil, badRequest("the JSON value must be an object")
	}

	present := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, describeJSONError(err)
		}
		name, _ := tok.(string)
		if !allowed[name] {
			return nil, badRequest("unknown field %q", truncate(name, maxNameInError))
		}
		if present[name] {
			return nil, badRequest("field %q appears more than once", truncate(name, maxNameInError))
		}
		present[name] = true

		var skipped json.RawMessage
		if err := dec.Decode(&skipped); err != nil {
			return nil, describeJSONError(err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, describeJSONError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("unexpected data after the JSON object")
	}
	return present, nil
}

// jsonNames returns the json tag names of the struct dst points to.
func jsonNames(dst any) map[string]bool {
	t := reflect.TypeOf(dst).Elem()
	names := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}

// describeJSONError turns an encoding/json error into a message for the
// client.
func describeJSONError(err error) *requestError {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntaxErr):
		return badRequest("invalid JSON at byte %d: %s", syntaxErr.Offset, syntaxErr.Error())
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("the JSON value is incomplete")
	case errors.As(err, &typeErr) && typeErr.Field == "":
		return badRequest("the JSON value must be an object, got %s", typeErr.Value)
	case errors.As(err, &typeErr):
		return badRequest("field %q must be %s, got %s", typeErr.Field, describeType(typeErr.Type), typeErr.Value)
	default:
		return badRequest("invalid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
}

func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	default:
		return "a " + t.Kind().String()
	}
}
