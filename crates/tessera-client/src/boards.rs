//! Task boards of an actor project: board items, delegation and workspace files, as methods of
//! [`ActorProjects`](crate::ActorProjects).

use tessera_api::ops;
use tessera_api::types::{
    BoardItem, BoardItemList, CreateBoardItemRequest, DelegateProjectTaskRequest,
    DelegateProjectTaskResponse, FilesystemDirParams, FilesystemFileParams, FilesystemListing,
    ListBoardItemsParams, UpdateBoardItemRequest, WorkspaceFile,
};

use crate::ai::ActorProjects;
use crate::request::{FileDownload, Request};

impl<'a> ActorProjects<'a> {
    fn item_op<T>(
        &self,
        op: tessera_api::Operation,
        project_id: &str,
        item_id: &str,
    ) -> Request<'a, T> {
        Request::operation(
            self.client,
            op,
            &[("project_id", project_id), ("item_id", item_id)],
        )
    }

    /// `createProjectTaskBoardItem`: without a schedule the item executes at once.
    pub fn create_board_item(
        &self,
        project_id: impl AsRef<str>,
        body: CreateBoardItemRequest,
    ) -> Request<'a, BoardItem> {
        Request::operation(
            self.client,
            ops::CREATE_PROJECT_TASK_BOARD_ITEM,
            &[("project_id", project_id.as_ref())],
        )
        .json(body)
    }

    /// `listProjectTaskBoardItems`: one page, oldest first.
    pub fn list_board_items(
        &self,
        project_id: impl AsRef<str>,
        params: ListBoardItemsParams,
    ) -> Request<'a, BoardItemList> {
        Request::operation(
            self.client,
            ops::LIST_PROJECT_TASK_BOARD_ITEMS,
            &[("project_id", project_id.as_ref())],
        )
        .query(params)
    }

    /// `getProjectTaskBoardItem`.
    pub fn get_board_item(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
    ) -> Request<'a, BoardItem> {
        self.item_op(
            ops::GET_PROJECT_TASK_BOARD_ITEM,
            project_id.as_ref(),
            item_id.as_ref(),
        )
    }

    /// `updateProjectTaskBoardItem`: absent fields stay as they are.
    pub fn update_board_item(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
        body: UpdateBoardItemRequest,
    ) -> Request<'a, BoardItem> {
        self.item_op(
            ops::UPDATE_PROJECT_TASK_BOARD_ITEM,
            project_id.as_ref(),
            item_id.as_ref(),
        )
        .json(body)
    }

    /// `archiveProjectTaskBoardItem`: also stops its schedule.
    pub fn archive_board_item(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
    ) -> Request<'a, BoardItem> {
        self.item_op(
            ops::ARCHIVE_PROJECT_TASK_BOARD_ITEM,
            project_id.as_ref(),
            item_id.as_ref(),
        )
    }

    /// `cancelProjectTaskBoardItem`: stops the schedule and cancels the active run.
    pub fn cancel_board_item(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
    ) -> Request<'a, BoardItem> {
        self.item_op(
            ops::CANCEL_PROJECT_TASK_BOARD_ITEM,
            project_id.as_ref(),
            item_id.as_ref(),
        )
    }

    /// `delegateProjectTask`.
    pub fn delegate_task(
        &self,
        project_id: impl AsRef<str>,
        body: DelegateProjectTaskRequest,
    ) -> Request<'a, DelegateProjectTaskResponse> {
        Request::operation(
            self.client,
            ops::DELEGATE_PROJECT_TASK,
            &[("project_id", project_id.as_ref())],
        )
        .json(body)
    }

    /// `listProjectTaskBoardItemFilesystem`: a directory (`path`, the root by default).
    pub fn list_board_item_filesystem(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
        path: Option<&str>,
    ) -> Request<'a, FilesystemListing> {
        self.item_op(
            ops::LIST_PROJECT_TASK_BOARD_ITEM_FILESYSTEM,
            project_id.as_ref(),
            item_id.as_ref(),
        )
        .query(FilesystemDirParams {
            path: path.map(str::to_owned),
        })
    }

    /// `getProjectTaskBoardItemFilesystemFile`: a file's metadata.
    pub fn get_board_item_filesystem_file(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
        path: &str,
    ) -> Request<'a, WorkspaceFile> {
        self.item_op(
            ops::GET_PROJECT_TASK_BOARD_ITEM_FILESYSTEM_FILE,
            project_id.as_ref(),
            item_id.as_ref(),
        )
        .query(FilesystemFileParams {
            path: path.to_owned(),
        })
    }

    /// `uploadProjectTaskBoardItemFilesystemFile`: creates or replaces the file.
    pub fn upload_board_item_filesystem_file(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
        path: &str,
        content: Vec<u8>,
        content_type: &str,
    ) -> Request<'a, WorkspaceFile> {
        self.item_op(
            ops::UPLOAD_PROJECT_TASK_BOARD_ITEM_FILESYSTEM_FILE,
            project_id.as_ref(),
            item_id.as_ref(),
        )
        .query(FilesystemFileParams {
            path: path.to_owned(),
        })
        .bytes(content, content_type)
    }

    /// `downloadProjectTaskBoardItemFilesystemFile`: the bytes, with the media type and file
    /// name from the response headers.
    pub fn download_board_item_filesystem_file(
        &self,
        project_id: impl AsRef<str>,
        item_id: impl AsRef<str>,
        path: &str,
    ) -> Request<'a, FileDownload> {
        self.item_op(
            ops::DOWNLOAD_PROJECT_TASK_BOARD_ITEM_FILESYSTEM_FILE,
            project_id.as_ref(),
            item_id.as_ref(),
        )
        .query(FilesystemFileParams {
            path: path.to_owned(),
        })
    }
}
