package api

import (
	_ "embed"
	"net/http"

	"github.com/julienschmidt/httprouter"
)

// openAPIDocument is the OpenAPI 3.0 document of this API, served at
// GET /api/v1/openapi.json. A test checks the handler's real responses
// against it.
//
//go:embed openapi.json
var openAPIDocument []byte

func (h *handler) openAPI(w http.ResponseWriter, _ *http.Request, _ httprouter.Params, _ string) {
	writeBody(w, http.StatusOK, "application/json", openAPIDocument)
}
