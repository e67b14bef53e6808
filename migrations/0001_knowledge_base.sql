-- Knowledge base (schema public): documents synced from Google Drive, their
-- chunks and the sync log. Column-compatible with the legacy
-- 001_knowledge_base.sql, and adopts a database that file built (mime_type
-- VARCHAR(100) or (200), folder_path index missing or present).
--
-- kb_chunks.embedding is created here as a plain real[] when absent; the
-- reconcile step turns it into vector(1536) with an HNSW index as soon as
-- pgvector is available (no extension is referenced in this file).

CREATE TABLE IF NOT EXISTS public.kb_documents (
    id              SERIAL PRIMARY KEY,
    google_doc_id   VARCHAR(255) NOT NULL UNIQUE,
    title           VARCHAR(500) NOT NULL,
    folder          VARCHAR(255),
    folder_path     VARCHAR(1000),
    mime_type       VARCHAR(200),
    full_content    TEXT,
    is_context_file BOOLEAN DEFAULT FALSE,
    token_count     INTEGER,
    last_synced     TIMESTAMP,
    sync_error      TEXT,
    created_at      TIMESTAMP DEFAULT NOW(),
    updated_at      TIMESTAMP DEFAULT NOW()
);

-- Databases built from the first legacy version lack these two columns, and
-- the legacy ad-hoc scripts created mime_type as VARCHAR(100) or VARCHAR(200).
ALTER TABLE public.kb_documents ADD COLUMN IF NOT EXISTS folder_path VARCHAR(1000);
ALTER TABLE public.kb_documents ADD COLUMN IF NOT EXISTS mime_type VARCHAR(200);
ALTER TABLE public.kb_documents ALTER COLUMN mime_type TYPE VARCHAR(200);

CREATE TABLE IF NOT EXISTS public.kb_chunks (
    id          SERIAL PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES public.kb_documents (id) ON DELETE CASCADE,
    chunk_text  TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    token_count INTEGER,
    created_at  TIMESTAMP DEFAULT NOW()
);
ALTER TABLE public.kb_chunks ADD COLUMN IF NOT EXISTS embedding REAL[];

-- The legacy table allowed chunks without a document and duplicate chunk
-- positions. Refuse loudly (nothing is deleted) rather than fail obscurely.
DO $$
DECLARE
    orphans    bigint;
    duplicates bigint;
BEGIN
    SELECT count(*) INTO orphans FROM public.kb_chunks WHERE document_id IS NULL;
    IF orphans > 0 THEN
        RAISE EXCEPTION 'kb_chunks holds % row(s) with a NULL document_id', orphans
            USING HINT = 'Delete them (they belong to no document): DELETE FROM kb_chunks WHERE document_id IS NULL;';
    END IF;
    SELECT count(*) INTO duplicates FROM (
        SELECT 1 FROM public.kb_chunks GROUP BY document_id, chunk_index HAVING count(*) > 1
    ) d;
    IF duplicates > 0 THEN
        RAISE EXCEPTION 'kb_chunks holds % duplicated (document_id, chunk_index) position(s)', duplicates
            USING HINT = 'Re-sync the affected documents, or delete the older duplicates, then migrate again.';
    END IF;
END
$$;

ALTER TABLE public.kb_chunks ALTER COLUMN document_id SET NOT NULL;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'public.kb_chunks'::regclass
          AND conname = 'kb_chunks_document_id_chunk_index_key'
    ) THEN
        ALTER TABLE public.kb_chunks
            ADD CONSTRAINT kb_chunks_document_id_chunk_index_key UNIQUE (document_id, chunk_index);
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.kb_sync_log (
    id                  SERIAL PRIMARY KEY,
    sync_type           VARCHAR(50) NOT NULL,
    started_at          TIMESTAMP NOT NULL,
    completed_at        TIMESTAMP,
    status              VARCHAR(50) NOT NULL,
    documents_processed INTEGER DEFAULT 0,
    documents_updated   INTEGER DEFAULT 0,
    documents_failed    INTEGER DEFAULT 0,
    error_message       TEXT,
    triggered_by        VARCHAR(100)
);

CREATE INDEX IF NOT EXISTS idx_kb_documents_folder ON public.kb_documents (folder);
CREATE INDEX IF NOT EXISTS idx_kb_documents_folder_path ON public.kb_documents (folder_path);
CREATE INDEX IF NOT EXISTS idx_kb_documents_context ON public.kb_documents (is_context_file);
CREATE INDEX IF NOT EXISTS idx_kb_documents_synced ON public.kb_documents (last_synced);
CREATE INDEX IF NOT EXISTS idx_kb_documents_mime_type ON public.kb_documents (mime_type);
CREATE INDEX IF NOT EXISTS idx_kb_chunks_document ON public.kb_chunks (document_id);
CREATE INDEX IF NOT EXISTS idx_kb_sync_log_started ON public.kb_sync_log (started_at DESC);
CREATE INDEX IF NOT EXISTS idx_kb_sync_log_status ON public.kb_sync_log (status);
