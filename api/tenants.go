package api

import (
	"errors"
	"net/http"

	"github.com/julienschmidt/httprouter"

	"github.com/go-messaging-system/messaging/persistence"
)

// generatedIDAttempts bounds the retries when a generated tenant id is
// already taken, which needs a collision of 32 random bits.
const generatedIDAttempts = 3

type createTenantRequest struct {
	ID          *string `json:"id"`
	Name        *string `json:"name"`
	WorkerCount *int    `json:"worker_count"`
}

type resizeTenantRequest struct {
	WorkerCount *int `json:"worker_count"`
}

type tenantList struct {
	Tenants []TenantView `json:"tenants"`
}

func (h *handler) createTenant(w http.ResponseWriter, r *http.Request, _ httprouter.Params, _ string) {
	data, err := readJSONBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	req, err := h.parseCreateTenant(data)
	if err != nil {
		writeRequestError(w, err)
		return
	}

	tenant, err := h.createWithID(r, req.ID, *req.Name, *req.WorkerCount)
	if err != nil {
		h.writeBackendError(w, r, "create the tenant", err)
		return
	}
	h.logger.InfoContext(r.Context(), "api: tenant created", "tenant_id", tenant.ID, "worker_count", tenant.WorkerCount)
	w.Header().Set("Location", "/api/v1/tenants/"+tenant.ID)
	writeJSON(w, http.StatusCreated, tenant)
}

// parseCreateTenant decodes and checks a create request. The result has the
// trimmed name and the worker count, defaulted when absent, and ID is nil
// when the server should generate one.
func (h *handler) parseCreateTenant(data []byte) (createTenantRequest, error) {
	var req createTenantRequest
	if _, err := decodeObject(data, &req); err != nil {
		return req, err
	}

	if req.Name == nil {
		return req, badRequest("name is required")
	}
	name, err := normalizeName(*req.Name)
	if err != nil {
		return req, badRequest("%s", err.Error())
	}
	req.Name = &name

	if req.WorkerCount == nil {
		workers := h.cfg.DefaultWorkerCount
		req.WorkerCount = &workers
	}
	if err := checkWorkerCount(*req.WorkerCount, h.cfg.MaxWorkerCount); err != nil {
		return req, badRequest("%s", err.Error())
	}
	if req.ID != nil && !validTenantID(*req.ID) {
		return req, badRequest("id must match %s; omit it to get a generated one", tenantIDPattern)
	}
	return req, nil
}

// createWithID creates the tenant under id, or under a generated id when
// id is nil.
func (h *handler) createWithID(r *http.Request, id *string, name string, workers int) (TenantView, error) {
	if id != nil {
		return h.tenants.Create(r.Context(), *id, name, workers)
	}
	var err error
	for range generatedIDAttempts {
		var tenant TenantView
		tenant, err = h.tenants.Create(r.Context(), newTenantID(name), name, workers)
		if !errors.Is(err, persistence.ErrTenantExists) {
			return tenant, err
		}
	}
	return TenantView{}, err
}

func (h *handler) listTenants(w http.ResponseWriter, r *http.Request, _ httprouter.Params, _ string) {
	tenants, err := h.tenants.List(r.Context())
	if err != nil {
		h.writeBackendError(w, r, "list tenants", err)
		return
	}
	if tenants == nil {
		tenants = []TenantView{}
	}
	writeJSON(w, http.StatusOK, tenantList{Tenants: tenants})
}

func (h *handler) getTenant(w http.ResponseWriter, r *http.Request, _ httprouter.Params, id string) {
	if !validTenantID(id) {
		tenantNotFound(w)
		return
	}
	tenant, err := h.tenants.Get(r.Context(), id)
	if err != nil {
		h.writeBackendError(w, r, "get the tenant", err)
		return
	}
	writeJSON(w, http.StatusOK, tenant)
}

func (h *handler) resizeTenant(w http.ResponseWriter, r *http.Request, _ httprouter.Params, id string) {
	if !validTenantID(id) {
		tenantNotFound(w)
		return
	}
	data, err := readJSONBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		writeRequestError(w, err)
		return
	}
	var req resizeTenantRequest
	if _, err := decodeObject(data, &req); err != nil {
		writeRequestError(w, err)
		return
	}
	if req.WorkerCount == nil {
		writeProblem(w, http.StatusBadRequest, "worker_count is required")
		return
	}
	if err := checkWorkerCount(*req.WorkerCount, h.cfg.MaxWorkerCount); err != nil {
		writeProblem(w, http.StatusBadRequest, err.Error())
		return
	}

	tenant, err := h.tenants.Resize(r.Context(), id, *req.WorkerCount)
	if err != nil {
		h.writeBackendError(w, r, "change the worker count", err)
		return
	}
	h.logger.InfoContext(r.Context(), "api: tenant resized", "tenant_id", id, "worker_count", tenant.WorkerCount)
	writeJSON(w, http.StatusOK, tenant)
}

func (h *handler) deleteTenant(w http.ResponseWriter, r *http.Request, _ httprouter.Params, id string) {
	if !validTenantID(id) {
		tenantNotFound(w)
		return
	}
	if err := h.tenants.Delete(r.Context(), id); err != nil {
		h.writeBackendError(w, r, "delete the tenant", err)
		return
	}
	h.logger.InfoContext(r.Context(), "api: tenant deleted", "tenant_id", id)
	w.WriteHeader(http.StatusNoContent)
}
