// Progressive enhancement of the upload form: the page works without this file (plain form post).
// With it: the photo pickers stay disabled until the notice is acknowledged, each photo uploads on
// its own with a progress bar, a failed photo can be retried, and a confirmation is announced.
"use strict";
(function () {
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) { return; }
  var ack = document.getElementById("ack");
  var pick = document.getElementById("pick");
  var send = document.getElementById("send");
  var progress = document.getElementById("progress");
  var list = document.getElementById("progress-list");
  var done = document.getElementById("done");
  var csrf = form.querySelector("input[name=csrf]").value;
  var sent = 0;

  function sync() {
    pick.disabled = !ack.checked;
    send.disabled = !ack.checked;
  }
  ack.addEventListener("change", sync);
  sync();

  function showError(message) {
    var box = document.getElementById("form-error");
    if (!box) {
      box = document.createElement("div");
      box.id = "form-error";
      box.className = "error";
      box.setAttribute("role", "alert");
      form.parentNode.insertBefore(box, form);
    }
    box.textContent = "";
    var p = document.createElement("p");
    p.textContent = message;
    box.appendChild(p);
  }

  function upload(file, index, row) {
    var bar = row.querySelector("progress");
    var state = row.querySelector(".state");
    var retry = row.querySelector("button");
    retry.hidden = true;
    state.textContent = "Sending…";
    state.className = "state";
    var data = new FormData();
    data.append("csrf", csrf);
    data.append("acknowledged", "yes");
    data.append("file", file);
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = function (event) {
        if (event.lengthComputable) { bar.value = Math.round((event.loaded / event.total) * 100); }
      };
      xhr.onload = function () {
        if (xhr.status >= 200 && xhr.status < 300) {
          bar.value = 100;
          state.textContent = "Received";
          state.className = "state status-ok";
          sent += 1;
          resolve(true);
          return;
        }
        var message = "Could not send this photo.";
        try { message = JSON.parse(xhr.responseText).error.message || message; } catch (e) { /* keep */ }
        fail(message);
      };
      xhr.onerror = function () { fail("The connection failed. Check your signal and try again."); };
      function fail(message) {
        state.textContent = message;
        state.className = "state status-bad";
        retry.hidden = false;
        retry.onclick = function () { upload(file, index, row).then(finish); };
        resolve(false);
      }
      xhr.send(data);
    });
  }

  function finish() {
    var pending = list.querySelectorAll(".status-bad").length;
    var all = list.querySelectorAll("li").length;
    if (pending === 0 && sent >= all && all > 0) {
      document.getElementById("done-count").textContent =
        sent + (sent === 1 ? " photo was" : " photos were");
      done.hidden = false;
      done.focus();
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!ack.checked) {
      showError("Please tick the box to confirm you have read the notice before sending photos.");
      ack.focus();
      return;
    }
    var files = [];
    form.querySelectorAll("input[type=file]").forEach(function (input) {
      for (var i = 0; i < input.files.length; i++) { files.push(input.files[i]); }
    });
    if (files.length === 0) {
      showError("Please take or choose at least one photo.");
      return;
    }
    var box = document.getElementById("form-error");
    if (box) { box.remove(); }
    progress.hidden = false;
    list.textContent = "";
    sent = 0;
    send.disabled = true;
    var rows = files.map(function (file, index) {
      var row = document.createElement("li");
      var label = document.createElement("label");
      label.textContent = "Photo " + (index + 1);
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      bar.id = "progress-" + index;
      label.htmlFor = bar.id;
      var state = document.createElement("span");
      state.className = "state";
      var retry = document.createElement("button");
      retry.type = "button";
      retry.textContent = "Try again";
      retry.hidden = true;
      row.append(label, bar, state, retry);
      list.appendChild(row);
      return row;
    });
    // One after another: large phone photos on a weak connection do better than in parallel.
    var chain = Promise.resolve();
    files.forEach(function (file, index) {
      chain = chain.then(function () { return upload(file, index, rows[index]); });
    });
    chain.then(function () {
      form.reset();
      sync();
      finish();
    });
  });
})();
